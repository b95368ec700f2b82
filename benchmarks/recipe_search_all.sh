#!/usr/bin/env bash
# Phases 1 and 2 of the recipe search, one after the other (about 50 min on one shared CPU core).
set -euo pipefail
cd "$(dirname "$0")/.."
run() { python benchmarks/recipe_search.py "$@"; }
run supervised
run pretrain --only lars-t0.5 lars-t0.2 adamw-t0.5
