"""A/B of Selective Kernels' stream mix within one process: the package's compiled mix, its PyTorch formulation with
a hand-written backward, and autograd's.

    python benchmarks/sk_mix_ab.py --width 0.25 1 --precision bf16 fp32 --pairs 4

Times one pretraining step of the encoder (forward and backward, as ``step_profile.py`` does) of a CIFAR-stem
ResNet-18 with Selective Kernels (ratio 0.0625) on ``--batch`` pairs of 28 px images, channels_last, with the
compiled kernels on. The "package" path is :class:`simclrv2.models.SelectiveKernelConv` as shipped (the mix by
``kernels/sk_mix.cpp``); "pytorch-mix" the same module with ``selective_kernel.COMPILED_MIX`` off (the mix as PyTorch
ops, its backward written by hand); "autograd" the plain formulation (split the streams into two chunks, mean of
their sum, multiply and add), whose backward autograd derives. Each round runs every path, in turn forwards and
backwards; the line gives each path's median seconds and the median and range of the paired ratios of each other
path's time over the package's (above 1: the package's is faster). Needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from simclrv2.models import SelectiveKernelConv, resnet, selective_kernel
from simclrv2.models.bn_relu import batch_norm_relu
from simclrv2.models.cpu_kernels import use_fused_kernels
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from ab_rounds import median_seconds, paired_ratio, rotated_rounds  # noqa: E402
from step_profile import encoder_step  # noqa: E402

PATHS = ("package", "pytorch-mix", "autograd")
_PACKAGE_FORWARD = SelectiveKernelConv.forward


def autograd_forward(self: SelectiveKernelConv, x: Tensor) -> Tensor:
    """The mix as plain tensor operations, every gradient left to autograd."""
    streams = batch_norm_relu(self.conv(x), self.bn)
    a, b = streams.chunk(2, dim=1)
    logits = self.gate((a + b).mean(dim=(2, 3), keepdim=True))
    weight_a, weight_b = torch.stack(logits.chunk(2, dim=1)).softmax(dim=0)
    return a * weight_a + b * weight_b


def interleaved(model: torch.nn.Module, images: Tensor, precision: str, pairs: int) -> dict[str, list[float]]:
    def timed(name: str) -> float:
        SelectiveKernelConv.forward = autograd_forward if name == "autograd" else _PACKAGE_FORWARD
        selective_kernel.COMPILED_MIX = name == "package"
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        encoder_step(model, images, precision)
        return time.perf_counter() - start

    try:
        return rotated_rounds(PATHS, timed, pairs)
    finally:
        SelectiveKernelConv.forward = _PACKAGE_FORWARD
        selective_kernel.COMPILED_MIX = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (the encoder sees 2x images)")
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.batch < 1:
        parser.error("--pairs and --batch must be at least 1")
    torch.set_flush_denormal(True)
    keep_freed_memory()
    fused = use_fused_kernels(True)
    images = torch.randn(2 * args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    for width in args.width:
        torch.manual_seed(0)
        model = resnet(18, width, cifar_stem=True, in_channels=1, sk_ratio=0.0625)
        model = model.to(memory_format=torch.channels_last)
        for precision in args.precision:
            seconds = interleaved(model, images, precision, args.pairs)
            print(json.dumps({"bench": "sk_mix_ab", "width": width, "sk_ratio": 0.0625, "precision": precision,
                              "batch": args.batch, "pairs": args.pairs, "fused_kernels": fused,
                              **median_seconds(seconds),
                              **{f"{name.replace('-', '_')}_over_package": paired_ratio(seconds[name],
                                                                                        seconds["package"])
                                 for name in PATHS[1:]},
                              "seconds": {name: [round(s, 4) for s in t] for name, t in seconds.items()},
                              **cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
