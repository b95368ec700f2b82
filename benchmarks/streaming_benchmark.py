"""Streaming benchmark (issue 16): a JPEG folder made from the Fashion-MNIST training images upscaled to RGB, and
a folder 10x larger made of hard links to the same files (it tests the file list and memory, not the disk).

Measures, each in a fresh process, ours and lightly 1.6.0 (driven on the same folder by ``lightly_folder.py`` in
the peer venv of the shared bench folder, when it exists): the loader alone (pairs/s of finished views through
the same number of DataLoader workers: ours crops at decode time in the workers and augments the batch in the
main process, lightly runs its whole transform per image in the workers), pretraining a ResNet-18 end to end
(pairs/s after the first step), time to the first finished step, and peak RSS of the process plus its workers.
With ``--stages`` it also measures the classifier stages on both folders, ours only (issue 22): ``finetune`` from a
pretraining run and ``distill`` from a fine-tuned teacher, their time to first step and peak RSS.

    python benchmarks/streaming_benchmark.py --images 60000 --size 96 224 --copies 10 --readme

The hard-linked folder is measured at the first size only; each size gets its own table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the shared README writer, importable when run as a module too
from readme_block import write_readme  # noqa: E402

LIGHTLY_PYTHON = Path.home() / ".cache" / "simclrv2-peers-venv" / "bin" / "python"
STAGES = ("pretrain", "finetune", "distill")
RSS_GROWTH_GOAL = 0.10  # issue 22: peak RSS grows less than this from the small folder to the large one
FIRST_STEP_GOAL_S = 15.0  # issue 22: each stage's time to first step


def make_folders(work: Path, images: int, size: int, copies: int) -> tuple[Path, Path | None]:
    """``work/small``: ``images`` JPEGs in class folders; ``work/large``: ``copies`` hard links to each (none
    when ``copies`` is 0). Each is built under a ``.partial`` name, so an interrupted build starts again."""
    from PIL import Image

    from simclrv2.data import find_data_dir
    from simclrv2.data.idx import FASHION_MNIST_CLASSES, read_idx_split

    small, large = work / f"small-{images}-{size}", work / f"large-{images * copies}-{size}"
    if not small.is_dir():
        data = read_idx_split(find_data_dir("fashion-mnist"), "train", "fashion-mnist", FASHION_MNIST_CLASSES)
        partial = small.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for i in range(images):
            folder = partial / f"{int(data.labels[i]):02d}"
            folder.mkdir(parents=True, exist_ok=True)
            grey = Image.fromarray(data.images[i, 0].numpy()).resize((size, size), Image.Resampling.BICUBIC)
            grey.convert("RGB").save(folder / f"{i:06d}.jpg", quality=90)
        partial.rename(small)
    if copies == 0:
        return small, None
    if not large.is_dir():
        partial = large.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for path in sorted(small.rglob("*.jpg")):
            folder = partial / path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            for c in range(copies):
                os.link(path, folder / f"{c:02d}-{path.name}")
        partial.rename(large)
    return small, large


def peak_rss_mb() -> float:
    """Peak RSS of this process plus the live workers it forked (VmHWM of each child), in MB."""
    total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    for pid in children.read_text().split() if children.is_file() else []:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def measure_loader(folder: Path, size: int, workers: int, batch: int, steps: int, precision: str) -> dict:
    """Finished views: crops decoded in the workers, then the batched flip/jitter/grey/blur of pretraining."""
    import torch

    from simclrv2.augment import AugmentConfig, draw_crop_randoms, simclr_views_from_crops
    from simclrv2.data.streaming import BatchSource, CropDataset, folder_index

    start = time.perf_counter()
    index = folder_index(folder)
    augment = AugmentConfig()
    generator = torch.Generator()
    plan = lambda step, n: draw_crop_randoms(2 * n, generator.manual_seed(step))  # noqa: E731
    source = BatchSource(CropDataset(index, size, 3, augment.crop_scale, augment.crop_ratio), batch, steps + 1,
                         plan, workers, torch.device("cpu"))
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    views = torch.Generator()
    for step, crops in enumerate(source(0, order, 0)):
        simclr_views_from_crops(crops, augment, views.manual_seed(step))
        if step == 0:
            first, tick = time.perf_counter() - start, time.perf_counter()
    return {"pairs_per_s": steps * batch / (time.perf_counter() - tick), "first_batch_s": first,
            "peak_rss_mb": peak_rss_mb(), "images": len(index)}


def stage_config(stage: str, folder: Path, size: int, workers: int, batch: int, precision: str,
                 network: str = "", labels: str = "1%"):
    """The streamed stage's config: the whole folder, no validation split, no kNN monitor; ``network`` is what a
    classifier stage starts from (finetune: a pretraining run; distill: the teacher)."""
    from simclrv2.config import load_config

    values = {"data.dataset": "folder", "data.data_dir": str(folder), "data.image_size": str(size),
              "data.val_size": "0", "data.stream": "stream", "data.workers": str(workers), "run.progress": "false",
              "run.precision": precision, "run.knn_every": "0", "run.log_every": "1000000",
              f"{stage}.batch_size": str(batch)}
    if stage == "finetune":
        values.update({"finetune.pretrained": network, "finetune.labels": labels})
    elif stage == "distill":
        values["distill.teacher"] = network
    return load_config(None, values)


def measure_train(folder: Path, size: int, workers: int, batch: int, steps: int, precision: str,
                  stage: str = "pretrain", network: str = "", labels: str = "1%", keep: str = "") -> dict:
    """A stage run through its real entry point, its steps timed by the engine (``on_step``) and stopped by SIGTERM
    after ``steps`` steps (the engine's clean stop, which saves the run: ``keep`` names the run directory to keep).
    Throughput counts the steps after the first (pairs for pretraining, images for the classifier stages)."""
    from simclrv2.errors import Interrupted
    from simclrv2.stages.distill import distill
    from simclrv2.stages.finetune import finetune
    from simclrv2.stages.pretrain import pretrain

    times, first_step_s = [], []

    def on_step(timing) -> None:
        times.append(timing)
        if len(times) == 1:
            first_step_s.append(time.perf_counter() - start)
        if len(times) == steps:
            signal.raise_signal(signal.SIGTERM)

    config = stage_config(stage, folder, size, workers, batch, precision, network, labels)
    run = {"pretrain": pretrain, "finetune": finetune, "distill": distill}[stage]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            run(config, Path(keep or Path(scratch) / "run"), on_step=on_step)
        except Interrupted:
            pass
    later = times[1:]
    rate = "pairs_per_s" if stage == "pretrain" else "images_per_s"
    return {rate: len(later) * batch / sum(t.step_s for t in later), "first_step_s": first_step_s[0],
            "data_s": sum(t.data_s for t in later) / len(later), "model_s": sum(t.model_s for t in later) / len(later),
            "peak_rss_mb": peak_rss_mb()}


def make_networks(work: Path, folder: Path, args: argparse.Namespace, size: int) -> dict[str, Path]:
    """What the classifier stages start from, made on ``folder`` by the real stages stopped after two steps (time to
    first step and memory do not depend on the weights): a pretraining run for finetune and a fine-tuned teacher
    for distill. Each is made once under a ``.partial`` name."""
    networks = {"finetune": work / f"pretrained-{size}", "distill": work / f"teacher-{size}"}
    for stage, made, network in (("pretrain", networks["finetune"], ""),
                                 ("finetune", networks["distill"], networks["finetune"])):
        if not made.is_dir():
            partial = made.with_suffix(".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _child("ours", stage, folder, args, size, network=network, keep=partial, steps=2)
            partial.rename(made)  # the teacher records its pretraining run by this final name
    return networks


def _child(library: str, kind: str, folder: Path, args: argparse.Namespace, size: int,
           precision: str = "auto", network: Path | str = "", keep: Path | str = "", steps: int = 0) -> dict:
    """Runs one measurement in a fresh process, so peak RSS and start-up time are its own. ``kind``: ``loader``
    or a stage (lightly: ``loader`` or ``pretrain``); ``network`` and ``keep`` as for :func:`measure_train`."""
    batch = args.loader_batch if kind == "loader" else args.batch
    common = ["--folder", str(folder), "--size", str(size), "--workers", str(args.workers),
              "--steps", str(steps or args.steps), "--batch", str(batch)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    if library == "ours":
        cmd = [sys.executable, __file__, "--measure", kind, *common, "--precision", precision, "--network",
               str(network), "--labels", args.labels, "--keep", str(keep)]
        env["PYTHONPATH"] = str(ROOT / "src")
    else:
        cmd = [str(args.lightly_python), str(Path(__file__).with_name("lightly_folder.py")), "--measure",
               "train" if kind == "pretrain" else kind, *common]
        env["PYTHONPATH"] = str(Path(__file__).parent)
    with tempfile.TemporaryDirectory() as cache:  # a cold file-index cache: ours lists the folder, as lightly does
        env["XDG_CACHE_HOME"] = cache
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{library} {kind} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        bf16 = "avx512_bf16" in fields.get("Flags", "") or "amx_bf16" in fields.get("Flags", "")
        return f"{fields['Model name'].strip()} ({'with' if bf16 else 'without'} native bf16)"
    except (OSError, KeyError):
        return platform.processor() or "unknown CPU"


def _ratio(ours: float, theirs: float | None, lower_is_better: bool = False) -> str:
    if not theirs:
        return "-"
    return f"{(theirs / ours if lower_is_better else ours / theirs):.2f}x"


def _folder_lines(folder: str, ours: dict, peer: dict) -> list[str]:
    lines = []

    def line(measure: str, mine: float, theirs: float | None, unit: str, lower: bool = False) -> None:
        shown = f"{theirs:.1f}{unit}" if theirs is not None else "-"
        lines.append(f"| {folder} | {measure} | {mine:.1f}{unit} | {shown} | {_ratio(mine, theirs, lower)} |")

    peer_train = peer.get("train", {})
    line("loader alone, pairs/s", ours["loader"]["pairs_per_s"], peer.get("loader", {}).get("pairs_per_s"), "")
    for precision, train in ours["train"].items():
        line(f"end to end, pairs/s (ours {precision})", train["pairs_per_s"], peer_train.get("pairs_per_s"), "")
    default = next(iter(ours["train"].values()))
    line("time to first step", default["first_step_s"], peer_train.get("first_step_s"), " s", lower=True)
    line("training peak RSS (process + workers)", default["peak_rss_mb"], peer_train.get("peak_rss_mb"), " MB",
         lower=True)
    return lines


def stage_lines(rows: dict[str, dict], copies: int, labels: str) -> list[str]:
    """The classifier stages (ours only): time to first step and peak RSS per stage and folder, then how peak RSS
    grows from the small folder to the large one and the slowest first step, each against the issue's goal."""
    stages = [stage for stage in STAGES if any(stage in row["ours"].get("stages", {}) for row in rows.values())]
    lines = [f"Classifier stages (finetune on {labels} labels from a pretraining run; distill from a fine-tuned "
             "teacher, on every image), streamed:", "",
             "| stage | folder | time to first step | peak RSS (process + workers) |", "|---|---|---:|---:|"]
    firsts = []
    for stage in stages:
        for name, row in rows.items():
            measured = row["ours"]["stages"][stage]
            lines.append(f"| {stage} | {name} ({row['images']:,} images) | {measured['first_step_s']:.1f} s | "
                         f"{measured['peak_rss_mb']:.1f} MB |")
            firsts.append((measured["first_step_s"], stage, name))
    if len(rows) == 2:
        growth = []
        for stage in stages:
            small, large = (row["ours"]["stages"][stage]["peak_rss_mb"] for row in rows.values())
            rise = large / small - 1
            growth.append(f"{stage} {rise:+.1%}" + (" (over)" if rise >= RSS_GROWTH_GOAL else ""))
        lines += ["", f"Peak RSS from the small folder to the {copies}x one: {', '.join(growth)} (goal: < "
                  f"{RSS_GROWTH_GOAL:.0%})."]
    slowest = max(firsts)
    lines.append(f"Slowest first step: {slowest[1]} on the {slowest[2]} folder, {slowest[0]:.1f} s (goal: <= "
                 f"{FIRST_STEP_GOAL_S:.0f} s each{'' if slowest[0] <= FIRST_STEP_GOAL_S else ': missed'}).")
    return lines


def table(args: argparse.Namespace, rows: dict[str, dict], size: int) -> str:
    """One line per measure and folder: ours, lightly's and how many times better ours is (> 1: ours better);
    then the classifier stages' table when they were measured."""
    pretraining = all("train" in row["ours"] for row in rows.values())
    lightly = "lightly 1.6.0 beside us" if args.lightly else "lightly 1.6.0 not installed here, so only ours"
    lines = [f"{cpu_model()}, {os.cpu_count()} cores (shared); {size} px RGB JPEGs from Fashion-MNIST, "
             f"{args.workers} DataLoader workers, ResNet-18 (width 1), training batch {args.batch}, loader batch "
             f"{args.loader_batch}, {args.steps} timed steps; "
             f"{lightly if pretraining else 'ours only (lightly is measured beside pretraining)'}; one run."]
    if pretraining:
        lines += ["", "| folder | measure | ours | lightly | ours ÷ lightly |", "|---|---|---:|---:|---:|"]
        for name, row in rows.items():
            lines += _folder_lines(f"{name} ({row['ours']['loader']['images']:,} images)", row["ours"],
                                   row.get("lightly", {}))
    if pretraining and len(rows) == 2:
        small, large = (next(iter(row["ours"]["train"].values())) for row in rows.values())
        growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
        lines += ["", f"Our training peak RSS grows {growth:+.1%} from the small folder to the {args.copies}x one "
                  "(goal: < 10 %, at most 2 GB)."]
    if any(row["ours"].get("stages") for row in rows.values()):
        lines += ["", *stage_lines(rows, args.copies, args.labels)]
    lines += ["", "Ours at `auto` precision is bf16 autocast on CPUs with native bf16, fp32 elsewhere; lightly runs "
              "fp32. Peak RSS adds the process and its workers, so pages they share count more than once. Time to "
              "first step counts from the start of the stage with a cold file-index cache (ours lists the folder, "
              "as lightly does) and includes building the model and starting the workers."]
    return "\n".join(lines)


def readme_block_id(size: int, stages: list[str]) -> str:
    """Pretraining's table and the classifier stages' table are separate blocks, so a run of either leaves the
    other's numbers (perhaps from another machine) in place."""
    return f"streaming-benchmark-{size}px" + ("" if "pretrain" in stages else "-stages")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60_000, help="Fashion-MNIST images in the small folder")
    parser.add_argument("--size", type=int, nargs="+", default=[96, 224], help="image sizes, one table each")
    parser.add_argument("--copies", type=int, default=10, help="hard links per image in the large folder (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64, help="pretraining batch (pairs)")
    parser.add_argument("--loader-batch", type=int, default=256)
    parser.add_argument("--precisions", nargs="+", default=["auto", "fp32"], choices=("auto", "bf16", "fp32"))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="stages measured on both folders (pretrain also measures the loader and lightly)")
    parser.add_argument("--labels", default="60/class",
                        help="finetune's labelled subset: a count per class keeps it the same on both folders")
    parser.add_argument("--lightly-python", type=Path, default=LIGHTLY_PYTHON)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "simclrv2-streaming-bench")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--measure", choices=("loader", *STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--network", default="", help=argparse.SUPPRESS)
    parser.add_argument("--keep", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "loader":
        print(json.dumps(measure_loader(args.folder, args.size[0], args.workers, args.batch, args.steps,
                                        args.precision)))
        return
    if args.measure:
        print(json.dumps(measure_train(args.folder, args.size[0], args.workers, args.batch, args.steps,
                                       args.precision, args.measure, args.network, args.labels, args.keep)))
        return
    sys.path.insert(0, str(ROOT / "src"))
    args.lightly = args.lightly_python.is_file()
    for size in args.size:
        copies = args.copies if size == args.size[0] else 0
        small, large = make_folders(args.work, args.images, size, copies)
        folders = {"small": small, **({f"{copies}x hard links": large} if large else {})}
        classifier_stages = [stage for stage in args.stages if stage != "pretrain"]
        networks = make_networks(args.work, small, args, size) if classifier_stages else {}
        rows: dict[str, dict] = {}
        counts = {"small": args.images, f"{copies}x hard links": args.images * copies}
        for name, folder in folders.items():
            ours: dict[str, dict] = {}
            if "pretrain" in args.stages:
                ours = {"loader": _child("ours", "loader", folder, args, size),
                        "train": {p: _child("ours", "pretrain", folder, args, size, p) for p in args.precisions}}
            if classifier_stages:
                ours["stages"] = {stage: _child("ours", stage, folder, args, size, args.precisions[0],
                                                network=networks[stage]) for stage in classifier_stages}
            rows[name] = {"ours": ours, "images": counts[name]}
            if args.lightly and "pretrain" in args.stages:
                rows[name]["lightly"] = {"loader": _child("lightly", "loader", folder, args, size),
                                         "train": _child("lightly", "pretrain", folder, args, size)}
            print(size, name, json.dumps(rows[name]), flush=True)
        text = table(args, rows, size)
        sizes = " ".join(map(str, args.size))
        command = (f"python benchmarks/streaming_benchmark.py --images {args.images} --size {sizes} --copies "
                   f"{args.copies} --workers {args.workers} --steps {args.steps} --batch {args.batch} --stages "
                   f"{' '.join(args.stages)} --labels {args.labels} --readme")
        print(text, flush=True)
        if args.readme:
            write_readme(readme_block_id(size, args.stages), command, text, ROOT / "README.md")


if __name__ == "__main__":
    main()
