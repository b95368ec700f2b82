"""Label efficiency on Fashion-MNIST: supervised vs linear vs fine-tuned vs distilled at 10 labels per class,
1 % and 10 % of the labels, over several seeds (mean ± sd), plus the classic plot (accuracy vs labels).

    python benchmarks/label_efficiency.py --config demo --seeds 0 1 2 --out runs/label-efficiency

Each seed runs the whole pipeline (its own pretraining, label subsets and initialisations) through the public
API; finished seeds are reused on a rerun. Settings are those of the config (chosen on validation); the test
split only reports. Writes into --out: per_seed.jsonl (every method, subset and seed), results.md (mean ± sd, and
each method minus supervised paired by seed) and label_efficiency.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from simclrv2 import load_config, pipeline
from simclrv2.logs import setup_logging
from simclrv2.results import PipelineSummary

SUBSETS = ("10/class", "1%", "10%")
NUM_LABELS = {"10/class": 100, "1%": 600, "10%": 6000}  # Fashion-MNIST: 60,000 training images, 10 classes


def run_seed(config_path: str, seed: int, out: Path, subsets: tuple[str, ...]) -> PipelineSummary:
    config = load_config(config_path)  # a TOML file or a shipped config's name
    config = dataclasses.replace(
        config, run=dataclasses.replace(config.run, seed=seed, progress=False),
        pipeline=dataclasses.replace(config.pipeline, label_fractions=subsets),
    )
    return pipeline(config, out / f"seed{seed}", resume=(out / f"seed{seed}").exists())


def aggregate(summaries: list[PipelineSummary]) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(method, subset) -> {"val": (mean, sd), "test": (mean, sd)} in %, over the seeds."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for summary in summaries:
        for row in summary.rows:
            cell = cells.setdefault((row.method, row.labels), {"val": [], "test": []})
            for split, value in (("val", row.val_top1), ("test", row.test_top1)):
                if value is not None:
                    cell[split].append(100 * value)
    return {key: {split: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                  for split, v in splits.items() if v}
            for key, splits in cells.items()}


def per_seed(summaries: list[PipelineSummary], seeds: list[int]) -> list[dict]:
    """One record per method, subset and seed, in %: what results.md aggregates, kept so it can be checked."""
    return [{"method": row.method, "labels": row.labels, "seed": seed,
             "val_top1": None if row.val_top1 is None else round(100 * row.val_top1, 2),
             "test_top1": None if row.test_top1 is None else round(100 * row.test_top1, 2)}
            for seed, summary in zip(seeds, summaries, strict=True) for row in summary.rows]


def paired_gains(records: list[dict], baseline: str = "supervised only") -> str:
    """Each method minus the baseline on the same seed and subset (test top-1), mean ± sd of the differences."""
    test = {(r["method"], r["labels"], r["seed"]): r["test_top1"] for r in records if r["test_top1"] is not None}
    subsets = list(dict.fromkeys(r["labels"] for r in records))
    lines = [f"test top-1 minus {baseline}, paired by seed (mean ± sd of the differences, n seeds)", "",
             "| method | " + " | ".join(subsets) + " |", "|---|" + "---|" * len(subsets)]
    for method in dict.fromkeys(r["method"] for r in records):
        if method == baseline:
            continue
        cells = []
        for subset in subsets:
            diffs = [v - test[(baseline, subset, seed)] for (m, s, seed), v in test.items()
                     if m == method and s == subset and (baseline, subset, seed) in test]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            cells.append(f"{statistics.fmean(diffs):+.1f} ± {sd:.1f} (n={len(diffs)})" if diffs else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: dict, subsets: tuple[str, ...], seeds: list[int]) -> str:
    methods = list(dict.fromkeys(method for method, _ in results))
    lines = [f"test top-1 (%), mean ± sd over seeds {', '.join(map(str, seeds))} (validation in brackets)", "",
             "| method | " + " | ".join(f"{s} ({NUM_LABELS.get(s, '?')} labels)" for s in subsets) + " |",
             "|---|" + "---|" * len(subsets)]
    for method in methods:
        cells = []
        for subset in subsets:
            cell = results.get((method, subset))
            if not cell or "test" not in cell:
                cells.append("-")
                continue
            (tm, ts), (vm, _) = cell["test"], cell.get("val", (float("nan"), 0.0))
            cells.append(f"{tm:.1f} ± {ts:.1f} ({vm:.1f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, subsets: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(method for method, _ in results):
        points = [(NUM_LABELS[s], *results[(method, s)]["test"]) for s in subsets
                  if (method, s) in results and "test" in results[(method, s)]]
        if points:
            x, mean, sd = zip(*points, strict=True)
            ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST: pretrained vs supervised only")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", default="demo", help="a TOML file or a shipped config's name (default: demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS))
    parser.add_argument("--out", type=Path, default=Path("runs/label-efficiency"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    subsets = tuple(args.subsets)
    start = time.perf_counter()
    summaries = [run_seed(args.config, seed, args.out, subsets) for seed in args.seeds]
    results = aggregate(summaries)
    records = per_seed(summaries, args.seeds)
    text = table(results, subsets, args.seeds) + "\n\n" + paired_gains(records)
    minutes = (time.perf_counter() - start) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (args.out / "results.md").write_text(f"{text}\n\nconfig: {args.config}; {minutes:.0f} min this invocation\n")
    plot(results, subsets, args.out / "label_efficiency.png")
    print(text)
    print(f"plot: {args.out / 'label_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
