"""Turns ``results/recipe_search.jsonl`` into ``results/recipe_search.md``: one table per phase, best first,
with the hand-written conclusions of ``results/recipe_search_notes.md`` on top.

    python benchmarks/recipe_report.py
    python benchmarks/recipe_report.py --best finetune   # prints the best run's name and optimiser
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = (
    ("supervised", "Phase 1: supervised baseline from scratch"),
    ("pretrain", "Phase 2: contrastive pretraining (judged by kNN on validation)"),
    ("finetune", "Phase 3: fine-tuning the pretrained network"),
    ("distill", "Phase 4: self-distillation on all 60,000 training images"),
)


def cpu() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, avx512_bf16 {'present' if 'avx512_bf16' in info else 'absent'}"


def describe(config: dict) -> str:
    opt = config["opt"]
    lr = f"{opt['base_lr']:g}" + ("" if opt["scaling"] == "none" else f" {opt['scaling']}")
    parts = [f"{opt['name']} lr {lr}", f"wd {opt['weight_decay']:g}"]
    if opt["warmup"]:
        parts.append(f"warmup {opt['warmup']:g}")
    parts.append(f"batch {config['batch']}")
    if "crop" in config:
        parts.append(config["crop"])
        parts.append(f"head layer {config['head_layer']}")
    if "crop_scale" in config:
        parts.append(f"tau {config['temperature']:g}, crop {tuple(config['crop_scale'])}")
    return ", ".join(parts)


def table(lines: list[dict], phase: str) -> list[str]:
    score = "knn_top1" if phase == "pretrain" else "val_top1"
    rows = sorted(lines, key=lambda r: (r.get("per_class", 0), -r[score]), reverse=False)
    head = ["run", "labels/class" if phase in ("supervised", "finetune") else "from", "seed", "config",
            "kNN top-1" if phase == "pretrain" else "val top-1", "peak lr", "steps", "train s", "wall s", "moved"]
    if phase == "distill":
        head.insert(5, "teacher top-1")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        source = r.get("per_class", r.get("student_init", ""))
        if phase == "finetune":
            source = f"{r['per_class']} (from {r['pretrained']})"
        config = describe(r["config"])
        if phase == "distill":
            config += f", tau {r['config']['temperature']:g}, teacher {r['teacher']}"
            source = f"{r['student_init']} ({r['pretrained']})"
        cells = [r["name"], str(source), str(r["seed"]), config, f"{100 * r[score]:.2f}",
                 f"{r['peak_lr']:.3g}", str(r["steps"]), f"{r['train_s']:.0f}", f"{r['wall_s']:.0f}",
                 f"{100 * r['moved']:.1f} %"]
        if phase == "distill":
            cells.insert(5, f"{100 * r['teacher_val_top1']:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    return out


def best(lines: list[dict], phase: str, per_class: int) -> dict:
    """The best seed-0 run of a phase (at ``per_class`` labels for the labelled phases)."""
    score = "knn_top1" if phase == "pretrain" else "val_top1"
    runs = [r for r in lines if r["phase"] == phase and r["seed"] == 0 and r.get("per_class", per_class) == per_class]
    return max(runs, key=lambda r: r[score])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--best", choices=[phase for phase, _ in PHASES], help="print the best run of a phase")
    parser.add_argument("--per-class", type=int, default=60)
    args = parser.parse_args()
    lines = [json.loads(line) for line in (RESULTS / "recipe_search.jsonl").read_text().splitlines() if line]
    if args.best:
        winner = best(lines, args.best, args.per_class)
        print(winner["name"], winner["config"]["opt"]["name"], winner["config"].get("head_layer", ""))
        return
    notes = RESULTS / "recipe_search_notes.md"
    out = [notes.read_text().rstrip() if notes.is_file() else "# Recipe search", "",
           f"CPU: {cpu()}; one torch thread per run; the two cores were shared with other jobs, so every time "
           "is indicative (a batch-64 step took 0.09-0.17 s, a batch-256 pretraining step about 1 s).", "",
           "`moved` = ||w - w0|| / ||w0|| over the conv and linear weights (without the new classifier).", ""]
    for phase, title in PHASES:
        chosen = [r for r in lines if r["phase"] == phase]
        if chosen:
            out += [f"## {title}", "", *table(chosen, phase), ""]
    (RESULTS / "recipe_search.md").write_text("\n".join(out) + "\n")
    print(f"wrote {RESULTS / 'recipe_search.md'} from {len(lines)} runs")


if __name__ == "__main__":
    main()
