"""A/B of ``simclrv2 predict`` on CPU within one process: with the compiled kernels against PyTorch's ops.

    python benchmarks/predict_ab.py --width 0.25 1 --precision fp32 bf16 --images 4096 --rounds 6

Times :meth:`simclrv2.LoadedModel.predict` (in each ``--precision``; 256 images a call, the command's default) on
``--images`` random one-channel 28 px images, through a CIFAR-stem ResNet-18 classifier on projection-head layer 1.
The first two paths are what the command and the method run: ``kernels``, their default, switches the compiled
kernels on and passes channels_last batches to the network as a checkpoint loads it; ``pytorch``
(``--no-fused-kernels``, ``fused_kernels=False``) runs PyTorch's ops on the loaded layout. The third,
``pytorch-channels-last``, runs PyTorch's ops on a network laid out channels_last, to tell the layout's share of
the difference from the kernels'. Each round runs every path, in turn forwards and backwards; the output gives
each path's median seconds and, for each other path, the median and range of its time over the kernels' in the
same round (above 1: the kernels are faster). The BatchNorm running statistics come from a few training-mode
batches, so the layers normalise as in a trained network. Needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from simclrv2.inference.loading import build_model
from simclrv2.inference.model import LoadedModel
from simclrv2.inference.preprocess import Preprocessing
from simclrv2.inference.spec import InferenceSpec
from simclrv2.models.cpu_kernels import build_kernels
from simclrv2.models.spec import ModelSpec
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from ab_rounds import images_per_second, median_seconds, paired_ratio, rotated_rounds  # noqa: E402

PATHS = ("kernels", "pytorch", "pytorch-channels-last")
CLASSES = tuple(str(k) for k in range(10))


def classifier_with_statistics(width: float) -> LoadedModel:
    """A freshly built classifier whose BatchNorms hold running statistics of a few batches, in evaluation mode."""
    torch.manual_seed(0)
    architecture = ModelSpec(depth=18, width_multiplier=width, sk_ratio=0.0, cifar_stem=True, in_channels=1,
                             head_layers=3, proj_dim=128)
    model = build_model(InferenceSpec(architecture, 1, CLASSES, Preprocessing(28, 1)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.momentum = None  # a plain average of the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(64, 1, 28, 28))
    return model.eval()


def interleaved(models: dict[str, LoadedModel], images: torch.Tensor, batch_size: int, precision: str, rounds: int
                ) -> dict[str, list[float]]:
    def timed(name: str) -> float:
        start = time.perf_counter()
        models[name].predict(images, batch_size=batch_size, precision=precision, fused_kernels=name == "kernels")
        return time.perf_counter() - start

    return rotated_rounds(PATHS, timed, rounds)


def summary(seconds: dict[str, list[float]], count: int) -> dict:
    return {**median_seconds(seconds), **images_per_second(seconds, count),
            **{f"{name}_over_kernels": paired_ratio(seconds[name], seconds["kernels"]) for name in PATHS[1:]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], nargs="+", default=["fp32"])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256, help="images a call (predict's --batch-size)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.images < 1 or args.batch_size < 1:
        parser.error("--rounds, --images and --batch-size must be at least 1")
    torch.set_flush_denormal(True)
    keep_freed_memory()
    if build_kernels() is None:
        parser.error("the compiled kernels are not available here (no C++ compiler): nothing to compare")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8, generator=generator)
    for width in args.width:
        loaded = classifier_with_statistics(width)
        channels_last = copy.deepcopy(loaded).to(memory_format=torch.channels_last)
        models = {"kernels": loaded, "pytorch": loaded, "pytorch-channels-last": channels_last}
        for precision in args.precision:
            seconds = interleaved(models, images, args.batch_size, precision, args.rounds)
            print(json.dumps({"bench": "predict_ab", "width": width, "precision": precision, "images": args.images,
                              "batch_size": args.batch_size, "rounds": args.rounds, **summary(seconds, args.images),
                              "seconds": {name: [round(s, 4) for s in t] for name, t in seconds.items()},
                              **cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
