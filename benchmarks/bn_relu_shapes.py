"""The encoder's memory-bound passes, compiled kernels against PyTorch's ops, per activation shape.

    python benchmarks/bn_relu_shapes.py --width 1 0.25 --precision bf16 fp32

For each distinct BatchNorm-ReLU shape of the CIFAR-stem ResNet-18 on a pretraining batch (``--batch`` pairs, so
2x images at 28 px, channels_last), times forward + backward of ``relu(bn(x))`` and of ``relu(bn(x) + shortcut)``
both ways (best of ``--repeats``), and prints each as milliseconds and as the GB/s the fused kernels' passes over
memory imply (forward 3 and backward 5; with the shortcut 4 and 7), beside a plain copy's GB/s on the same tensor.
The rows without the shortcut also time the sum of a block input's two gradients: autograd's in-place ``add_``
against the compiled ``add`` of :mod:`simclrv2.models.branch` (``grad_sum_*``, GB/s for three passes), and a
BatchNorm alone, as a projection shortcut runs it, forward + backward both ways (``bn_only_*``, GB/s for the
kernel's eight passes).
Freed memory is kept for reuse, as a training session does. Needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from simclrv2.models.bn_relu import batch_norm, batch_norm_relu
from simclrv2.models.cpu_kernels import build_kernels, use_fused_kernels
from simclrv2.models.resnet import scaled_channels
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from conv_shapes import best_seconds  # noqa: E402

STAGES = ((64, 28), (128, 14), (256, 7), (512, 4))  # base channels and map size of each stage at 28 px


def gb_per_s(byte_count: float, seconds: float) -> float:
    """GB/s to three significant figures: a tiny shape's rate on a loaded machine stays above 0 (rounded to one
    decimal, 0.04 GB/s read 0.0)."""
    return float(f"{byte_count / seconds / 1e9:.3g}")


def both_ways(step, repeats: int) -> dict[str, float]:
    """Best seconds of ``step`` with PyTorch's ops and with the compiled kernels."""
    seconds = {}
    for name in ("pytorch", "fused"):
        use_fused_kernels(name == "fused")  # the process switch a session sets; the build is cached
        seconds[name] = best_seconds(step, repeats)
    return seconds


def time_shape(batch: int, channels: int, size: int, dtype: torch.dtype, with_shortcut: bool, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    shape = (batch, channels, size, size)
    x, grad, shortcut = (torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
                         for _ in range(3))
    bn = nn.BatchNorm2d(channels)

    def step() -> None:
        inp = x.detach().requires_grad_()
        residual = shortcut.detach().requires_grad_() if with_shortcut else None
        batch_norm_relu(inp, bn, residual).backward(grad)

    seconds = both_ways(step, repeats)
    size_bytes = x.numel() * x.element_size()
    sums = {}
    if not with_shortcut:
        def bn_only() -> None:
            batch_norm(x.detach().requires_grad_(), bn).backward(grad)

        for name, seconds_bn in both_ways(bn_only, repeats).items():
            sums[f"bn_only_{name}_ms"] = round(seconds_bn * 1e3, 2)
            sums[f"bn_only_{name}_gbps"] = gb_per_s(8 * size_bytes, seconds_bn)
        kernels = build_kernels()  # main() checked it built; cached
        accumulated = grad.clone()
        seconds_sum = {"pytorch": best_seconds(lambda: accumulated.add_(shortcut), repeats),  # as autograd does
                       "compiled": best_seconds(lambda: kernels.add(grad, shortcut), repeats)}
        sums.update({f"grad_sum_{name}_ms": round(value * 1e3, 2) for name, value in seconds_sum.items()})
        sums.update({f"grad_sum_{name}_gbps": gb_per_s(3 * size_bytes, value) for name, value in seconds_sum.items()})
    # with the shortcut: read in forward; in backward the saved output is read once and the shortcut's gradient
    # written, then read in place of the gradient and the output
    passes = 11 if with_shortcut else 8
    return {"channels": channels, "size": size, "shortcut": with_shortcut,
            "pytorch_ms": round(seconds["pytorch"] * 1e3, 2), "fused_ms": round(seconds["fused"] * 1e3, 2),
            "speedup": round(seconds["pytorch"] / seconds["fused"], 2),
            "fused_gbps": gb_per_s(passes * size_bytes, seconds["fused"]),
            "copy_gbps": gb_per_s(2 * size_bytes, best_seconds(x.clone, repeats)), **sums}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, nargs="+", default=[1.0])
    parser.add_argument("--precision", nargs="+", choices=["bf16", "fp32"], default=["bf16"])
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (the encoder sees 2x images)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    keep_freed_memory()
    torch.set_flush_denormal(True)
    if not use_fused_kernels(True):
        print("the fused kernels are unavailable here (see the warning above)", file=sys.stderr)
        return 1
    for width in args.width:
        for precision in args.precision:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            for base, size in STAGES:
                channels = scaled_channels(base, width)
                for with_shortcut in (False, True):
                    record = {"bench": "bn_relu_shapes", "width": width, "precision": precision,
                              "batch": args.batch,
                              **time_shape(2 * args.batch, channels, size, dtype, with_shortcut, args.repeats),
                              **cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}
                    print(json.dumps(record), flush=True)
    use_fused_kernels(False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
