"""Where streamed pretraining should run flip, jitter, grey and blur (issue 22): in the main process on the whole
batch (what the package does: the same code on the GPU), or in the DataLoader workers, each augmenting its own
batch in its collate function. Both draw the same views for the same seed (checked here, bit for bit); only
the speed of the loader alone differs, measured in alternating fresh processes so host drift spreads evenly.

    python benchmarks/augment_placement.py --size 224 --rounds 5 --out benchmarks/results/augment_placement.jsonl

The worker-side variant is built here from the package's own parts (CropDataset, StepSampler,
simclr_views_from_crops); it is not a package option, because it did not measure faster (README, issue 22).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from streaming_benchmark import cpu_model, make_folders  # noqa: E402

from simclrv2.augment import AugmentConfig, draw_crop_randoms, simclr_views_from_crops  # noqa: E402
from simclrv2.data.streaming import BatchSource, CropDataset, folder_index  # noqa: E402
from simclrv2.data.streaming.loader import StepSampler, one_thread  # noqa: E402

PLACEMENTS = ("main", "workers")


class _Stepped(Dataset):
    """The crop dataset, its items tagged with their step, so a worker's collate can seed the step's draws."""

    def __init__(self, crops: CropDataset) -> None:
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, item: tuple[int, torch.Tensor, int]) -> tuple[torch.Tensor, int]:
        index, randoms, step = item
        return self.crops[(index, randoms)], step


class _SteppedSampler(StepSampler):
    def __iter__(self):
        for i, items in enumerate(super().__iter__()):
            step = self.epoch * self.steps_per_epoch + self.first + i
            yield [(index, randoms, step) for index, randoms in items]


def _augment_in_worker(augment: AugmentConfig):
    def collate(items: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        crops = torch.stack([c for c, _ in items])  # (B, 2, C, S, S)
        crops = crops.transpose(0, 1).reshape(-1, *crops.shape[2:])
        return torch.cat(simclr_views_from_crops(crops, augment, torch.Generator().manual_seed(items[0][1])))
    return collate


def batches(folder: Path, size: int, placement: str, workers: int, batch: int, steps: int):
    """Finished (2B, C, S, S) views of ``steps`` steps, augmented where ``placement`` says."""
    augment, index = AugmentConfig(), folder_index(folder)
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    plan_generator = torch.Generator()

    def plan(step: int, n: int) -> torch.Tensor:
        return draw_crop_randoms(2 * n, plan_generator.manual_seed(step))

    crops = CropDataset(index, size, 3, augment.crop_scale, augment.crop_ratio)
    if placement == "main":
        views = torch.Generator()
        for step, batch_crops in enumerate(BatchSource(crops, batch, steps, plan, workers, torch.device("cpu"))(
                0, order, 0)):
            yield torch.cat(simclr_views_from_crops(batch_crops, augment, views.manual_seed(step)))
        return
    sampler = _SteppedSampler(batch, steps, plan)
    sampler.start(0, order, 0)
    yield from DataLoader(_Stepped(crops), batch_sampler=sampler, num_workers=workers,
                          collate_fn=_augment_in_worker(augment), worker_init_fn=one_thread if workers else None,
                          persistent_workers=workers > 0, prefetch_factor=2 if workers else None)


def measure(folder: Path, size: int, placement: str, workers: int, batch: int, steps: int) -> float:
    """Pairs/s after the first batch (which pays for starting the workers)."""
    tick = None
    for step, _ in enumerate(batches(folder, size, placement, workers, batch, steps + 1)):
        if step == 0:
            tick = time.perf_counter()
    return steps * batch / (time.perf_counter() - tick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two placements")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "augment-placement")
    parser.add_argument("--out", type=Path, help="JSONL of the measurements")
    parser.add_argument("--measure", choices=PLACEMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder, _ = make_folders(args.work, args.images, args.size, 0)
    if args.measure:
        print(measure(folder, args.size, args.measure, args.workers, args.batch, args.steps))
        return
    main_views, worker_views = (list(batches(folder, args.size, p, 1, 8, 2)) for p in PLACEMENTS)
    same = all(torch.equal(a, b) for a, b in zip(main_views, worker_views, strict=True))
    print(f"same views in both placements: {same}")
    runs: dict[str, list[float]] = {p: [] for p in PLACEMENTS}
    for _ in range(args.rounds):
        for placement in PLACEMENTS:  # each in a fresh process: its own workers and caches
            out = subprocess.run([sys.executable, __file__, "--measure", placement, *sys.argv[1:]],
                                 capture_output=True, text=True, check=True).stdout
            runs[placement].append(float(out.split()[-1]))
    row = {"cpu": cpu_model(), "size": args.size, "workers": args.workers, "batch": args.batch,
           "steps": args.steps, "same_views": same, "pairs_per_s": runs,
           "mean": {p: statistics.mean(v) for p, v in runs.items()},
           "sd": {p: statistics.stdev(v) if len(v) > 1 else 0.0 for p, v in runs.items()}}
    print(json.dumps(row))
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
