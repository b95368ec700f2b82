"""Tables, paired differences, the claims and the plot of the scale study, from its committed per-run results.

    python benchmarks/scale_report.py [--results benchmarks/results/scale_study.jsonl] [--readme]

Writes benchmarks/results/scale_study.md and scale_study.png; with ``--readme`` also the README's block. Every
number comes from the JSONL that benchmarks/scale_study.py writes; nothing here trains or reads images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from readme_block import write_readme
from scale_claims import _depth_claims, claim
from scale_depth import depth_cells, depth_recipe_table, depth_seed_cells, depth_table
from scale_distill import distill_labels_table, distill_length_table, distill_recipe_table
from scale_head import head_rows, head_table
from scale_pretraining import (
    PRETRAINING_PER_SEED,
    _knn_by_seed,
    _size_length,
    pretrain_table,
    pretraining_length_cells,
    pretraining_length_table,
    pretraining_seed_cells,
    pretraining_seed_table,
)
from scale_size import plot, recipe_table, size_table
from scale_stats import read_rows
from scale_variants import memory_table, selective_kernels_table, temperature_table

from simclrv2 import load_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_study.jsonl"
COMMAND = "python benchmarks/scale_study.py && python benchmarks/scale_report.py --readme"


def _pretraining_sections(rows: list[dict], cells: dict) -> list[str]:
    """The report's sections on the pretraining itself: a pretraining per seed, and a longer one (shared by the
    seeds, then per seed)."""
    parts = []
    replicated = pretraining_seed_cells(rows, cells)
    if replicated:
        parts += ["", "A pretraining per seed (seed s fine-tuned from a pretraining of seed s; the same "
                  "supervised-only runs and recipes):", "", pretraining_seed_table(rows, replicated)]
    by_length = pretraining_length_cells(rows, cells)
    if by_length:
        parts += ["", "A longer pretraining (seed 0's, fine-tuned with the recipes chosen at the table's length; "
                  "the same supervised-only runs):", "", pretraining_length_table(rows, by_length)]
    by_length = pretraining_length_cells(rows, replicated, per_seed=True)
    if by_length:
        parts += ["", "A longer pretraining per seed (seed s fine-tuned from a longer pretraining of seed s, against "
                  "the pretraining per seed of the table's length; the same recipes and supervised-only runs):", "",
                  pretraining_length_table(rows, by_length, per_seed=True)]
    return parts


def report(rows: list[dict]) -> tuple[str, dict, list[float], list[str]]:
    demo = load_config("demo")  # the study's base config: what a row without a setting's fact ran
    every_row, rows = rows, [r for r in rows if not r.get("depth")]  # deeper encoders: their own section
    size_rows = [r for r in rows if r["part"] in ("size", "recipe")]
    widths = sorted({r["width"] for r in size_rows})
    subsets = [s for s in ("10/class", "1%", "10%") if any(r.get("labels") == s for r in size_rows)]
    table, cells = size_table(rows, widths, subsets)
    by_depth = depth_cells(every_row, cells, subsets, demo.model.depth)
    by_depth_per_seed = depth_seed_cells(every_row, by_depth, pretraining_seed_cells(rows, cells), demo.model.depth,
                                         _size_length(rows))
    claims = (claim(rows, cells, widths, subsets) + _depth_claims(by_depth, subsets)
              + _depth_claims(by_depth_per_seed, subsets, PRETRAINING_PER_SEED))
    parts = ["Test top-1 (%), mean ± sd over seeds; each cell's seeds share one pretraining and differ in label "
             "subset, initialisation and augmentation. Differences are paired by seed.", "", table, ""]
    if claims:
        parts += ["| claim | paper | ours | verdict |", "|---|---|---|---|", *claims, ""]
    parts += ["Recipes chosen on validation (1 % labels, seed 0), the same number of candidates per stage:", "",
              recipe_table(rows), "", pretrain_table(every_row)]
    if any(r["part"] == "distill-recipe" for r in rows):
        parts += ["", "Self-distillation recipes (1 % labels, seed 0), on validation:", "", distill_recipe_table(rows)]
    lengths = distill_length_table(rows, cells)
    if lengths:
        parts += ["", "Self-distillation's length (epochs over all training images):", "", lengths]
    with_labels = distill_labels_table(rows, subsets)
    if with_labels:
        parts += ["", "Self-distillation with the labelled term too (it weighs 1 − α, on the teacher's own labelled "
                  "subset):", "", with_labels]
    if any(r["part"] == "head" for r in rows):
        parts += ["", "Head depth (fine-tuning from each layer; in bold the layer chosen on validation, by the mean "
                  "over seeds):", "", head_table(head_rows(rows), subsets)]
    per_seed_head = head_rows(rows, per_seed=True)
    if per_seed_head:
        width = per_seed_head[0]["width"]
        knn = [f"{h} layers: " + _knn_by_seed(rows, f"pretrain-w{width}-h{h}")
               for h in sorted({r["head_layers"] for r in per_seed_head})]
        parts += ["", "Head depth, a pretraining per seed (seed s fine-tuned from every layer of a pretraining of "
                  "seed s; in bold the layer chosen on validation; kNN top-1 after each pretraining: "
                  + "; ".join(knn) + "):", "", head_table(per_seed_head, subsets)]
    if any(r["part"] == "memory" for r in rows):
        parts += ["", "A memory of negatives in pretraining (width 0.25):", "",
                  memory_table(rows, cells, subsets, demo.pretrain.memory_momentum)]
    selective_kernels = selective_kernels_table(rows, cells, subsets)
    if selective_kernels:
        parts += ["", "Selective Kernels in the encoder (the plain encoder's recipes, one pretraining each):",
                  "", selective_kernels]
    parts += _pretraining_sections(rows, cells)
    if by_depth:
        parts += ["", f"Encoder depth (each deeper ResNet with its own recipes, chosen on validation; ResNet-"
                  f"{demo.model.depth} is the table's; one pretraining per encoder):", "",
                  depth_table(by_depth, subsets, demo.model.depth), "", depth_recipe_table(every_row)]
    if by_depth_per_seed:
        parts += ["", "Encoder depth, a pretraining per seed (seed s fine-tuned from a pretraining of seed s at every "
                  "depth; the same recipes and supervised-only runs):", "",
                  depth_table(by_depth_per_seed, subsets, demo.model.depth)]
    temperatures, best = temperature_table(rows, demo.pretrain.temperature)
    if temperatures:
        parts += ["", "Pretraining temperature, fine-tuned with the recipe chosen at the demo's τ (chosen on "
                  f"validation: τ {best:g}):", "", temperatures]
    return "\n".join(parts), cells, widths, subsets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", action="store_true", help="also write the README's block")
    args = parser.parse_args(argv)
    rows = read_rows(args.results)
    text, cells, widths, subsets = report(rows)
    out = args.results.with_suffix("")
    Path(f"{out}.md").write_text(f"# Scale study\n\n`{COMMAND}`\n\n{text}\n")
    plot(cells, widths, subsets, Path(f"{out}.png"))
    if args.readme:
        figure = Path(f"{out}.png").resolve().relative_to(ROOT)
        write_readme("scale-study", COMMAND, f"{text}\n\n![accuracy against network size]({figure})")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
