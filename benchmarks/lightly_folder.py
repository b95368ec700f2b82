"""lightly 1.6.0 on an image folder, the way its SimCLR example reads one: ``LightlyDataset(input_dir)`` with
``SimCLRTransform`` in a plain DataLoader, a torchvision ResNet-18 (fc removed), ``SimCLRProjectionHead``,
``NTXentLoss`` and SGD. Runs in the peer venv of the shared bench folder (``setup_peers.sh``), called by
``streaming_benchmark.py``; prints one JSON line with the same fields as our measurements there.

The transform matches our defaults for images above 32 px: crop scale 0.08-1, flip 0.5, colour jitter strength
0.5 with p 0.8, grayscale 0.2, blur p 0.5 with sigma 0.1-2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streaming_benchmark import peak_rss_mb  # stdlib-only at import: safe in the peer venv


def _loader(folder: Path, size: int, workers: int, batch: int):
    import torch
    from lightly.data import LightlyDataset
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=size, cj_strength=0.5, min_scale=0.08, random_gray_scale=0.2,
                                gaussian_blur=0.5, hf_prob=0.5)
    dataset = LightlyDataset(input_dir=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    return dataset, loader


def measure_loader(folder: Path, size: int, workers: int, batch: int, steps: int) -> dict:
    start = time.perf_counter()
    dataset, loader = _loader(folder, size, workers, batch)
    batches = iter(loader)
    next(batches)
    first, tick = time.perf_counter() - start, time.perf_counter()
    for _ in range(steps):
        next(batches)
    result = {"pairs_per_s": steps * batch / (time.perf_counter() - tick), "first_batch_s": first,
              "peak_rss_mb": peak_rss_mb(), "images": len(dataset)}
    del batches
    return result


def measure_train(folder: Path, size: int, workers: int, batch: int, steps: int) -> dict:
    import torch
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    start = time.perf_counter()
    _, loader = _loader(folder, size, workers, batch)
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(512, 512, 128))
    criterion = NTXentLoss(temperature=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    times: list[float] = []
    batches = iter(loader)
    for _ in range(steps):
        (view0, view1), _, _ = next(batches)
        loss = criterion(model(view0), model(view1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter())
    result = {"pairs_per_s": (len(times) - 1) * batch / (times[-1] - times[0]), "first_step_s": times[0] - start,
              "peak_rss_mb": peak_rss_mb()}
    del batches
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", choices=("loader", "train"), required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    measure = measure_loader if args.measure == "loader" else measure_train
    print(json.dumps(measure(args.folder, args.size, args.workers, args.batch, args.steps)), flush=True)


if __name__ == "__main__":
    main()
