"""Streamed against in-memory (issue 22): the whole ``simclrv2 pipeline`` twice on one image folder made from
Fashion-MNIST's training images, once with ``data.stream = "memory"`` (the folder read whole into RAM) and once with
``"stream"`` (decoded per step by DataLoader workers), same config and seed; every stage's validation top-1 and
the pretraining kNN monitor side by side.

    python benchmarks/stream_parity.py --images 60000 --size 28 --pretrain-epochs 2 --readme

The two paths crop differently (the streamed one at decode time on the PIL image, the in-memory one on the
tensor), so runs agree up to resampling and the seed's chaos, not bit for bit: the issue's goal is each stage within
0.5 points and the kNN monitor within 1. Runs are resumed (``--resume``), so the command can be stopped and rerun.
Results: one JSON line per path in ``--results``; ``--readme`` writes the table into README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from readme_block import write_readme  # noqa: E402
from streaming_benchmark import cpu_model, make_folders  # noqa: E402

PATHS = ("memory", "stream")
STAGE_GOAL = 0.5  # issue 22: every stage's validation top-1, streamed vs in memory, within this (points)
KNN_GOAL = 1.0  # issue 22: the kNN monitor, streamed vs in memory


def pipeline_command(folder: Path, run_dir: Path, path: str, args: argparse.Namespace) -> list[str]:
    """The demo pipeline on the folder: the same overrides for both paths but ``data.stream``."""
    values = {"data.dataset": "folder", "data.data_dir": str(folder), "data.image_size": str(args.size),
              "data.stream": path, "data.workers": str(args.workers), "pretrain.epochs": str(args.pretrain_epochs),
              "run.knn_bank_size": str(args.knn_bank), "run.progress": "false",
              "pipeline.head_layers": "1"}
    return [sys.executable, "-m", "simclrv2", "pipeline", "--config", "demo", "--run-dir", str(run_dir),
            "--resume", *(part for key, value in values.items() for part in (f"--{key}", value))]


def read_summary(run_dir: Path, path: str) -> dict:
    """One results line: the path, each summary row's validation top-1 (by method and labels) and the kNN."""
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = {f"{row['method']} ({row['labels']})": row["val_top1"] for row in summary["rows"]
              if row["val_top1"] is not None}
    return {"path": path, "stages": stages, "knn_final": summary["knn_final"], "knn_init": summary["knn_init"],
            "wall_time_s": summary["wall_time_s"]}


def parity_table(rows: dict[str, dict]) -> tuple[str, list[str]]:
    """The markdown table (validation top-1 in %, streamed − in memory) and one verdict line per goal."""
    memory, stream = rows["memory"], rows["stream"]
    lines = ["| stage | in memory | streamed | streamed − in memory |", "|---|---:|---:|---:|"]
    gaps = []
    for name in memory["stages"]:
        if name in stream["stages"]:
            a, b = 100 * memory["stages"][name], 100 * stream["stages"][name]
            gaps.append(abs(b - a))
            lines.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    knn_gap = None
    if memory["knn_final"] is not None and stream["knn_final"] is not None:
        a, b = 100 * memory["knn_final"], 100 * stream["knn_final"]
        knn_gap = abs(b - a)
        lines.append(f"| pretraining kNN monitor (final) | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    verdicts = []
    if gaps:
        met = "met" if max(gaps) <= STAGE_GOAL else "not met"
        verdicts.append(f"Largest stage gap {max(gaps):.2f} points (goal: within {STAGE_GOAL}): {met}.")
    if knn_gap is not None:
        met = "met" if knn_gap <= KNN_GOAL else "not met"
        verdicts.append(f"kNN monitor gap {knn_gap:.2f} points (goal: within {KNN_GOAL}): {met}.")
    return "\n".join(lines), verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--size", type=int, default=28, help="side of the JPEGs written (the pipeline's input)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--knn-bank", type=int, default=10000, help="run.knn_bank_size, the same for both")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "stream-parity")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "stream_parity.jsonl")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()

    folder, _ = make_folders(args.work, args.images, args.size, 0)
    rows = {}
    for path in PATHS:
        run_dir = args.work / f"{path}-{args.images}-{args.size}px-e{args.pretrain_epochs}"
        subprocess.run(pipeline_command(folder, run_dir, path, args), check=True)
        rows[path] = read_summary(run_dir, path)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("".join(json.dumps({**row, "images": args.images, "size": args.size,
                                                "pretrain_epochs": args.pretrain_epochs, "cpu": cpu_model()}) + "\n"
                                    for row in rows.values()))
    table, verdicts = parity_table(rows)
    text = (f"{cpu_model()}; {args.images:,} Fashion-MNIST training images as {args.size} px RGB JPEGs in class "
            f"folders; `simclrv2 pipeline --config demo` with pretraining {args.pretrain_epochs} "
            f"epoch{'s' if args.pretrain_epochs != 1 else ''}, fine-tuning "
            f"from head layer 1, kNN bank {args.knn_bank:,}, {args.workers} DataLoader worker(s) when streamed; "
            f"seed 0, one run per path. Validation top-1 (%):\n\n{table}\n\n" + " ".join(verdicts))
    print(text)
    if args.readme:
        command = (f"python benchmarks/stream_parity.py --images {args.images} --size {args.size} "
                   f"--pretrain-epochs {args.pretrain_epochs} --readme")
        write_readme("stream-parity", command, text, ROOT / "README.md")


if __name__ == "__main__":
    main()
