#!/usr/bin/env bash
# Phases 3-5 of the recipe search after recipe_search_all.sh: each step starts from the best run before it.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { python benchmarks/recipe_search.py "$@"; }
best() { python benchmarks/recipe_report.py --best "$@"; }
report() { python benchmarks/recipe_report.py; }
read -r P _ <<<"$(best pretrain)"
run finetune --pretrained "$P"; report
read -r F FAMILY _ <<<"$(best finetune)"
run finetune --pretrained "$P" --only "$F" --head-layer 0; report
TEACHER="finetune-$F-h1-60pc-s0.pt"
case "$FAMILY" in  # distil with the optimiser family that won fine-tuning
  sgd) KD="kd-sgd-0.05-t1 kd-sgd-0.05-t0.1" ;;
  lars) KD="kd-lars-t1 kd-lars-t0.1" ;;
  *) KD="kd-adamw-3e-4-t1 kd-adamw-3e-4-t0.1" ;;
esac
# shellcheck disable=SC2086
run distill --pretrained "$P" --teacher "$TEACHER" --only $KD
report
read -r S _ <<<"$(best supervised)"
run supervised --only "$S" --per-class 10; run finetune --pretrained "$P" --only "$F" --per-class 10; report
run supervised --only "$S" --seed 1; run finetune --pretrained "$P" --only "$F" --seed 1; report
