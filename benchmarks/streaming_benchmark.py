"""Streaming benchmark (issue 16): a JPEG folder made from the Fashion-MNIST training images upscaled to RGB, and
a folder 10x larger made of hard links to the same files (it tests the file list and memory, not the disk).

Measures, each in a fresh process: the loader alone (images/s through the DataLoader workers, crops at decode
time), pretraining end to end (ResNet-18 pairs/s after the first step), time to the first finished step, and
peak RSS of the training process plus its workers. lightly 1.6.0 is driven on the same folder when its venv
exists (see the shared bench README); otherwise the table says so.

    python benchmarks/streaming_benchmark.py --images 6000 --size 96 --steps 12 --readme
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- streaming-benchmark -->", "<!-- /streaming-benchmark -->"
LIGHTLY_PYTHON = Path.home() / ".cache" / "simclrv2-peers-venv" / "bin" / "python"


def make_folders(work: Path, images: int, size: int, copies: int) -> tuple[Path, Path]:
    """``work/small``: ``images`` JPEGs in class folders; ``work/large``: ``copies`` hard links to each."""
    from PIL import Image

    from simclrv2.data import find_data_dir
    from simclrv2.data.idx import FASHION_MNIST_CLASSES, read_idx_split

    small, large = work / f"small-{images}-{size}", work / f"large-{images * copies}-{size}"
    if not small.is_dir():
        data = read_idx_split(find_data_dir("fashion-mnist"), "train", "fashion-mnist", FASHION_MNIST_CLASSES)
        partial = small.with_suffix(".partial")
        for i in range(images):
            folder = partial / f"{int(data.labels[i]):02d}"
            folder.mkdir(parents=True, exist_ok=True)
            grey = Image.fromarray(data.images[i, 0].numpy()).resize((size, size), Image.Resampling.BICUBIC)
            grey.convert("RGB").save(folder / f"{i:06d}.jpg", quality=90)
        partial.rename(small)
    if not large.is_dir():
        partial = large.with_suffix(".partial")
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


def measure_loader(folder: Path, size: int, workers: int, batch: int, steps: int) -> dict:
    import torch

    from simclrv2.augment import draw_crop_randoms
    from simclrv2.data.streaming import BatchSource, CropDataset, folder_index

    start = time.perf_counter()
    index = folder_index(folder)
    generator = torch.Generator()
    plan = lambda step, n: draw_crop_randoms(2 * n, generator.manual_seed(step))  # noqa: E731
    source = BatchSource(CropDataset(index, size, 3, (0.08, 1.0), (0.75, 4 / 3)), batch, steps + 1, plan,
                         workers, torch.device("cpu"))
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    batches = source(0, order, 0)
    next(batches)
    first, tick = time.perf_counter() - start, time.perf_counter()
    for _ in batches:
        pass
    return {"images_per_s": steps * batch / (time.perf_counter() - tick), "first_batch_s": first,
            "peak_rss_mb": peak_rss_mb(), "images": len(index)}


def measure_train(folder: Path, size: int, workers: int, batch: int, steps: int) -> dict:
    """Pretraining through the real stage, stopped by SIGTERM after ``steps`` steps (the engine's clean stop)."""
    from simclrv2.config import load_config
    from simclrv2.errors import Interrupted
    from simclrv2.stages import engine
    from simclrv2.stages.pretrain import pretrain

    times: list[float] = []
    real_step = engine._train_step

    def timed_step(*args, **kwargs):
        value = real_step(*args, **kwargs)
        times.append(time.perf_counter())
        if len(times) == steps:
            signal.raise_signal(signal.SIGTERM)
        return value

    engine._train_step = timed_step
    config = load_config(None, {
        "data.dataset": "folder", "data.data_dir": str(folder), "data.image_size": str(size), "data.val_size": "0",
        "data.stream": "stream", "data.workers": str(workers), "pretrain.batch_size": str(batch),
        "run.progress": "false", "run.precision": "fp32", "run.knn_every": "0", "run.log_every": "1000000"})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            pretrain(config, Path(run_dir) / "run")
        except Interrupted:
            pass
    return {"pairs_per_s": (len(times) - 1) * batch / (times[-1] - times[0]), "first_step_s": times[0] - start,
            "peak_rss_mb": peak_rss_mb()}


def _child(kind: str, folder: Path, args: argparse.Namespace) -> dict:
    """Runs one measurement in a fresh process, so peak RSS and start-up time are its own."""
    cmd = [sys.executable, __file__, "--measure", kind, "--folder", str(folder), "--size", str(args.size),
           "--workers", str(args.workers), "--steps", str(args.steps), "--batch", str(args.batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def table(args: argparse.Namespace, rows: dict[str, dict]) -> str:
    lightly = ("lightly 1.6.0: measured beside us" if LIGHTLY_PYTHON.is_file() else
               "lightly 1.6.0: not installed here (its venv from the shared bench setup is missing), so only ours")
    lines = [f"{cpu_model()}, {os.cpu_count()} cores (shared); {args.size} px RGB JPEGs from Fashion-MNIST, "
             f"{args.workers} workers, ResNet-18 width 1, batch {args.batch} (loader batch {args.loader_batch}), "
             f"{args.steps} steps; {lightly}.", "",
             "| folder | images | loader images/s | loader peak RSS | first batch | train pairs/s | "
             "time to first step | train peak RSS |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        loader, train = row["loader"], row["train"]
        lines.append(f"| {name} | {loader['images']:,} | {loader['images_per_s']:.0f} | "
                     f"{loader['peak_rss_mb']:.0f} MB | {loader['first_batch_s']:.1f} s | {train['pairs_per_s']:.1f} | "
                     f"{train['first_step_s']:.1f} s | {train['peak_rss_mb']:.0f} MB |")
    small, large = rows.values()
    growth = large["train"]["peak_rss_mb"] / small["train"]["peak_rss_mb"] - 1
    lines += ["", f"Training peak RSS grows {growth:+.1%} from the small folder to the {args.copies}x one "
              "(goal: < 10 %)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60_000, help="Fashion-MNIST images in the small folder")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--copies", type=int, default=10, help="hard links per image in the large folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32, help="pretraining batch (pairs)")
    parser.add_argument("--loader-batch", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "simclrv2-streaming-bench")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--measure", choices=("loader", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure = measure_loader if args.measure == "loader" else measure_train
        print(json.dumps(measure(args.folder, args.size, args.workers, args.batch, args.steps)))
        return
    sys.path.insert(0, str(ROOT / "src"))
    small, large = make_folders(args.work, args.images, args.size, args.copies)
    rows = {}
    for name, folder in (("small", small), (f"{args.copies}x hard links", large)):
        loader_args = argparse.Namespace(**{**vars(args), "batch": args.loader_batch})
        rows[name] = {"loader": _child("loader", folder, loader_args), "train": _child("train", folder, args)}
        print(name, json.dumps(rows[name]), flush=True)
    text = table(args, rows)
    command = (f"python benchmarks/streaming_benchmark.py --images {args.images} --size {args.size} "
               f"--workers {args.workers} --steps {args.steps} --batch {args.batch} --readme")
    print(text)
    if args.readme:
        readme = ROOT / "README.md"
        content = readme.read_text()
        block = f"{MARK_START}\n`{command}`\n\n{text}\n{MARK_END}"
        if MARK_START in content:
            head, rest = content.split(MARK_START, 1)
            content = head + block + rest.split(MARK_END, 1)[1]
        else:
            content = content.rstrip("\n") + "\n\n" + block + "\n"
        readme.write_text(content)


if __name__ == "__main__":
    main()
