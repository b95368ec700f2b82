"""The optimiser step of the fine-tuning, supervised and distillation stages on CPU: PyTorch's default SGD and AdamW
step against the fused one the package builds (``simclrv2.optim.fused_on_cpu``), alternated in one process.

    python benchmarks/optimizer_step_ab.py --width 0.25 1 --rounds 60

The parameters are the shipped demo's classifier (encoder, 3-layer head, linear layer) at each width, with random
gradients; each round steps every optimiser once, the order rotating. The line per width and optimiser gives the
median milliseconds of each side and the median of the paired ratios, fused over default. Needs an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from simclrv2 import load_config
from simclrv2.models.spec import ModelSpec
from simclrv2.optim import build_optimizer, param_groups
from simclrv2.provenance import cpu_kind

OPTIMIZERS = ("sgd", "adamw")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args(argv)
    for width in args.width:
        spec = ModelSpec.from_config(load_config("demo", {"model.width_multiplier": str(width)}).model, 28, 1)
        model = spec.build_classifier(1, 10, seed=0)
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter) * 1e-3
        sides = {}
        for name in OPTIMIZERS:
            for side, fused in (("default", False), ("fused", None)):  # None: the package's own choice
                sides[f"{name}-{side}"] = build_optimizer(param_groups(model, 1e-4), name, 0.01, 1e-4, 0.9, fused)
        order = list(sides)
        seconds: dict[str, list[float]] = {side: [] for side in order}
        for index in range(args.rounds + 2):  # the first two rounds warm up
            shift = index % len(order)
            for side in order[shift:] + order[:shift]:
                start = time.perf_counter()
                sides[side].step()
                if index >= 2:
                    seconds[side].append(time.perf_counter() - start)
        for name in OPTIMIZERS:
            default, fused = seconds[f"{name}-default"], seconds[f"{name}-fused"]
            print(json.dumps({
                "bench": "optimizer_step_ab", "width": width, "optimizer": name, "rounds": args.rounds,
                "parameters": sum(p.numel() for p in model.parameters()),
                "tensors": len(list(model.parameters())),
                "default_ms": round(statistics.median(default) * 1e3, 3),
                "fused_ms": round(statistics.median(fused) * 1e3, 3),
                "fused_over_default": round(statistics.median(f / d for f, d in zip(fused, default, strict=True)), 3),
                **cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
