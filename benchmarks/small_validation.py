"""What if validation were no larger than the label subset? The scale study chooses each recipe on a 5,000-image
validation split while the 1 % setting has 600 labels; a user with 600 labels would rarely hold out 5,000 more.

    python benchmarks/small_validation.py [--results benchmarks/results/scale_study.jsonl] [--sizes 600 100]

For every width and stage, each candidate of the recipe grid (its finished run under --out) predicts the package's
validation images once; then --draws class-balanced subsets of --sizes images are drawn from them, and on each
the best candidate is chosen as the study chooses on the whole split. Reported per grid and size: how often the
small split picks the same recipe as the whole one, and the mean test top-1 of the recipes it picks (from the
results file: the test split is not read here) against the whole split's pick. Writes the table to
small_validation.md beside the results file and, with --readme, into the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch
from readme_block import write_readme
from scale_size import grid_rows

from simclrv2 import load, load_config
from simclrv2.stages.inputs import training_data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_study.jsonl"


def balanced_draw(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` indices, the same number from every class (the package's validation split is balanced too)."""
    classes = labels.unique()
    per_class = size // len(classes)
    picks = [torch.nonzero(labels == c).flatten() for c in classes]
    return torch.cat([p[torch.randperm(len(p), generator=generator)[:per_class]] for p in picks])


def choices(correct: torch.Tensor, labels: torch.Tensor, size: int, draws: int) -> list[int]:
    """The index of the best candidate (first on ties) on each of ``draws`` balanced subsets of ``size``."""
    generator = torch.Generator().manual_seed(0)
    picks = []
    for _ in range(draws):
        index = balanced_draw(labels, size, generator)
        picks.append(int(correct[:, index].float().mean(1).argmax()))
    return picks


def analyse(grids: dict, out: Path, config: str, sizes: list[int], draws: int) -> str:
    data = training_data(dataclasses.replace(load_config(config).data))
    val = data.val
    lines = [f"| width | stage | validation images | same pick as all {len(val):,} | test top-1 of the pick (mean "
             f"over draws) | test top-1 of the {len(val):,}-image pick |", "|---|---|---|---|---|---|"]
    for (width, method), candidates in grids.items():
        correct = torch.stack([load(out / c["run"]).predict(val.images).argmax(1) == val.labels for c in candidates])
        full = int(torch.tensor([c["val_top1"] for c in candidates]).argmax())
        for size in sizes:
            picks = choices(correct, val.labels, size, draws)
            same = 100 * sum(p == full for p in picks) / len(picks)
            test = statistics.fmean(candidates[p]["test_top1"] for p in picks)
            lines.append(f"| {width:g} | {method} | {size} | {same:.0f} % | {test:.2f} | "
                         f"{candidates[full]['test_top1']:.2f} ({candidates[full]['recipe']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=Path("runs/scale"), help="the scale study's run directory")
    parser.add_argument("--config", default="demo", help="the study's base config (for its validation split)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 100])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    table = analyse(grid_rows(rows), args.out, args.config, args.sizes, args.draws)
    text = (f"Each recipe grid of the scale study re-chosen on {args.draws} class-balanced draws of a smaller "
            f"validation split (the same trained candidates; seed 0, 1 % labels):\n\n{table}")
    (args.results.parent / "small_validation.md").write_text(text + "\n")
    if args.readme:
        command = "python benchmarks/small_validation.py --readme"
        write_readme("small-validation", command, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
