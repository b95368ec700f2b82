"""Throughput of the SimCLR two-view augmentation on CPU, in pairs (one image, two views) per second.

Default recipe (``AugmentConfig()``: crop, flip, jitter s = 0.5, grayscale; blur is off at <= 32 px) on random
uint8 batches of 28x28x1 (Fashion-MNIST) and 32x32x3 (CIFAR) images. Prints one JSON line per shape.

    python benchmarks/augment_throughput.py --batch 256 --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from simclrv2.augment import AugmentConfig, simclr_views

SHAPES = ((1, 28, 28), (3, 32, 32))


def pairs_per_second(shape: tuple[int, int, int], batch: int, steps: int, warmup: int,
                     channels_last: bool) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=generator)
    config = AugmentConfig()
    for _ in range(warmup):
        simclr_views(images, config, generator, channels_last=channels_last)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        simclr_views(images, config, generator, channels_last=channels_last)
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)  # the median resists other jobs on a shared machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for shape in SHAPES:
        rate = pairs_per_second(shape, args.batch, args.steps, args.warmup, args.channels_last)
        print(json.dumps({"shape": "x".join(map(str, shape[1:] + shape[:1])), "batch": args.batch,
                          "threads": torch.get_num_threads(), "channels_last": args.channels_last,
                          "pairs_per_s": round(rate)}))


if __name__ == "__main__":
    main()
