"""The Winograd layers' per-call weight transforms, three ways alternated step by step in one process: compiled
(``kernels/winograd_weights.cpp``, the package's), one GEMM with G ⊗ G in PyTorch ops (before it) and torch.einsum
(before that).

    python benchmarks/winograd_transform_ab.py --width 0.25 --batch 64 --pairs 40

A step is a classifier's forward, cross-entropy, backward and SGD step on random 28 px images (the fine-tuning and
supervised stages' step; ``--batch 512`` is a pretraining step's image count). Each side's passes are swapped into
``simclrv2.models.winograd`` before its step, the order of the sides rotating from one round to the next. The line
gives each side's median and, for each earlier side, the median and quartiles of the paired ratios, compiled over
it. The transforms are paid per call whatever the batch, so they weigh most on small batches. They run only where
the Winograd rules take a layer (fp32, where oneDNN runs AVX2, or on AVX-512-BF16 CPUs without AMX); elsewhere
every side runs the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import simclrv2.models.winograd as winograd
from simclrv2 import load_config
from simclrv2.models.cpu_kernels import FLAGS_VARIABLE, build_kernels, use_fused_kernels
from simclrv2.models.spec import ModelSpec
from simclrv2.optim import build_optimizer, param_groups
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory


def einsum_transformed_weight(weight: Tensor, tile: int) -> Tensor:
    """The transform as it was: G g Gᵀ by einsum, then a re-layout of the whole result."""
    k, c = weight.shape[:2]
    g = winograd._g(weight, tile)
    u = torch.einsum("ai,kcij,bj->abck", g, weight, g)
    return u.reshape((tile + 2) ** 2, c, k // winograd.STRIP, winograd.STRIP).permute(0, 2, 1, 3).contiguous()


def einsum_weight_from_transformed(du: Tensor, out_channels: int, in_channels: int) -> Tensor:
    side = round(du.shape[0] ** 0.5)
    g = winograd._g(du, side - 2)
    grad = torch.einsum("ai,abck,bj->kcij", g, du.view(side, side, in_channels, out_channels), g)
    return grad.contiguous(memory_format=torch.channels_last)


def passes_with(transformed: Callable, transformed_swapped_flipped: Callable, from_transformed: Callable) -> dict:
    """forward, input_grad and weight_grad as ``simclrv2.models.winograd`` has them, with other weight transforms:
    ``transformed(weight, tile)``, ``transformed_swapped_flipped(weight, tile)`` and ``from_transformed(du, K, C)``."""
    def forward(kernels, x, weight, tile=2):
        return kernels.winograd_conv3x3(x, transformed(weight, tile))

    def input_grad(kernels, grad_out, weight, tile=2):
        return kernels.winograd_conv3x3(grad_out.contiguous(memory_format=torch.channels_last),
                                        transformed_swapped_flipped(weight, tile))

    def weight_grad(kernels, x, grad_out, tile=2):
        du = kernels.winograd_weight_grad(x, grad_out.contiguous(memory_format=torch.channels_last), tile,
                                          winograd.PARTIAL_SUMS_BUDGET_BYTES)
        return from_transformed(du, grad_out.shape[1], x.shape[1])

    return {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}


def einsum_passes() -> dict:
    """The passes with the einsum transforms (the input gradient's of the flipped, channel-swapped kernel)."""
    return passes_with(einsum_transformed_weight,
                       lambda weight, tile: einsum_transformed_weight(weight.flip(2, 3).transpose(0, 1), tile),
                       einsum_weight_from_transformed)


def gemm_passes() -> dict:
    """The passes with the package's PyTorch-op transforms (one G ⊗ G GEMM each), as before they were compiled."""
    return passes_with(winograd.transformed_weight, winograd.transformed_swapped_flipped_weight,
                       winograd.weight_from_transformed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pairs", type=int, default=40, help="rounds: steps timed on each side")
    args = p.parse_args(argv)
    keep_freed_memory()
    if build_kernels() is None:
        raise SystemExit("the compiled kernels did not build: no Winograd layers to measure")
    use_fused_kernels(True)
    sides = {"compiled": {name: getattr(winograd, name) for name in ("forward", "input_grad", "weight_grad")},
             "gemm": gemm_passes(), "einsum": einsum_passes()}
    names = list(sides)
    spec = ModelSpec.from_config(load_config("demo", {"model.width_multiplier": str(args.width)}).model, 28, 1)
    model = spec.build_classifier(1, 10, seed=0).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(param_groups(model, 1e-4), "sgd", 0.01, 1e-4, 0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=gen)

    def step(side: str) -> float:
        for name, function in sides[side].items():
            setattr(winograd, name, function)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    for side in names + names:  # warm-up: oneDNN's primitives, the allocator
        step(side)
    times: dict[str, list[float]] = {side: [] for side in names}
    for i in range(args.pairs):
        for side in names[i % len(names):] + names[:i % len(names)]:
            times[side].append(step(side))
    for name, function in sides["compiled"].items():
        setattr(winograd, name, function)
    record = {"bench": "winograd_transform_ab", "width": args.width, "batch": args.batch, "pairs": args.pairs,
              **{f"{side}_ms": round(statistics.median(times[side]) * 1e3, 1) for side in names}}
    for side in names[1:]:
        ratios = sorted(new / old for new, old in zip(times["compiled"], times[side], strict=True))
        record[f"compiled_over_{side}_median"] = round(statistics.median(ratios), 3)
        record[f"compiled_over_{side}_quartiles"] = [round(ratios[len(ratios) // 4], 3),
                                                     round(ratios[3 * len(ratios) // 4], 3)]
    print(json.dumps({**record, **cpu_kind(), "kernel_flags": os.environ.get(FLAGS_VARIABLE, ""),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
