"""A/B of evaluation's BatchNorm path within one process: the one-pass kernel against PyTorch's ops.

    python benchmarks/eval_forward_ab.py --width 0.25 1 --precision bf16 fp32 --images 4096 --pairs 6

Times :func:`simclrv2.eval.features.encoder_features`, the code the kNN monitor, linear evaluation and the final
scores run (evaluation mode, no gradient, ``run.eval_batch_size`` images a call), on ``--images`` random one-channel
28 px images through a CIFAR-stem ResNet-18, with the compiled kernels on. Each pair runs both paths, A B then B A;
the table gives each path's median seconds and the median and range of the paired ratios (PyTorch's time over the
kernel's: above 1 means the kernel is faster). The BatchNorm statistics come from a few training-mode batches, so
the layers normalise as in a trained network. Needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from simclrv2.data.dataset import ImageDataset
from simclrv2.eval.features import encoder_features
from simclrv2.models import bn_relu, resnet
from simclrv2.models.cpu_kernels import use_fused_kernels
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from ab_rounds import images_per_second, median_seconds, paired_ratio, rotated_rounds  # noqa: E402

PATHS = ("kernel", "pytorch")


def eval_path(name: str) -> Callable:
    """The ``_fusable_eval`` of one path: the package's test, or one that always says no."""
    return _FUSABLE_EVAL if name == "kernel" else (lambda *args: False)


_FUSABLE_EVAL = bn_relu._fusable_eval


def random_images(count: int, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return ImageDataset(images, labels, tuple(str(k) for k in range(10)), tuple(map(str, range(count))), "random")


def encoder_with_statistics(width: float) -> torch.nn.Module:
    """A ResNet-18 whose BatchNorms hold running statistics of a few batches (γ of 1 everywhere, so every residual
    branch contributes), in evaluation mode."""
    torch.manual_seed(0)
    model = resnet(18, width, cifar_stem=True, in_channels=1).to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            module.momentum = None  # a plain average of the batches below
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    return model.eval()


def interleaved(model: torch.nn.Module, images: ImageDataset, precision: str, batch_size: int, pairs: int
                ) -> dict[str, list[float]]:
    def timed(name: str) -> float:
        bn_relu._fusable_eval = eval_path(name)
        start = time.perf_counter()
        encoder_features(model, images, torch.device("cpu"), batch_size, precision)
        return time.perf_counter() - start

    try:
        return rotated_rounds(PATHS, timed, pairs)
    finally:
        bn_relu._fusable_eval = _FUSABLE_EVAL


def summary(seconds: dict[str, list[float]], count: int) -> dict:
    return {**median_seconds(seconds), **images_per_second(seconds, count),
            "pytorch_over_kernel": paired_ratio(seconds["pytorch"], seconds["kernel"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1024, help="images a call (run.eval_batch_size)")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.images < 1 or args.batch_size < 1:
        parser.error("--pairs, --images and --batch-size must be at least 1")
    torch.set_flush_denormal(True)
    keep_freed_memory()
    if not use_fused_kernels(True):
        parser.error("the compiled kernels are not available here (no C++ compiler): nothing to compare")
    images = random_images(args.images)
    for width in args.width:
        model = encoder_with_statistics(width)
        for precision in args.precision:
            seconds = interleaved(model, images, precision, args.batch_size, args.pairs)
            print(json.dumps({"bench": "eval_forward_ab", "width": width, "precision": precision,
                              "images": args.images, "batch_size": args.batch_size, "pairs": args.pairs,
                              **summary(seconds, args.images),
                              "seconds": {name: [round(s, 4) for s in t] for name, t in seconds.items()},
                              **cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
