"""Where one encoder training step's time goes, by operator, and how fast memory-bound passes run.

    python benchmarks/step_profile.py --width 1 --precision bf16            # run.keep_freed_memory on (default)
    python benchmarks/step_profile.py --width 1 --precision bf16 --no-keep-freed-memory
    python benchmarks/step_profile.py --width 1 --precision bf16 --no-fused-kernels    # PyTorch's BN and ReLU

Times forward + backward of the CIFAR-stem ResNet-18 on a pretraining batch (``--batch`` pairs, so 2x images at
28 px, channels_last, bf16 autocast or fp32) under torch.profiler, and prints the operators' self time with the
share each takes (convolutions, BatchNorm, ReLU, adds). Then times three memory-bound passes over one first-stage
activation (ReLU's backward, a copy, an add) in GB/s, and a copy of 1 GiB (``dram_copy_gbps``), more than the
caches hold: within a step the activations come from memory, so that is the speed its memory-bound passes can
reach. The allocator setting lasts for the process, so compare separate invocations. Needs an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from simclrv2.models import resnet
from simclrv2.models.cpu_kernels import use_fused_kernels
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from conv_shapes import best_seconds  # noqa: E402

REPEATS = 5  # best of, for the memory-bound passes


def bandwidth(shape: tuple[int, ...], dtype: torch.dtype, dram_copy_mib: int) -> dict[str, float]:
    """GB/s of three passes that only move memory, on a tensor the size of a first-stage activation."""
    grad = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    out = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last).relu()
    size = grad.numel() * grad.element_size()
    return {"relu_backward_gbps": round(3 * size / best_seconds(
                lambda: torch.ops.aten.threshold_backward(grad, out, 0), REPEATS) / 1e9, 1),
            "copy_gbps": round(2 * size / best_seconds(grad.clone, REPEATS) / 1e9, 1),
            "add_gbps": round(3 * size / best_seconds(lambda: grad.add(out), REPEATS) / 1e9, 1),
            "dram_copy_gbps": dram_copy_gbps(dram_copy_mib)}


def encoder_step(model: torch.nn.Module, images: torch.Tensor, precision: str) -> None:
    """Forward and backward of the encoder on a pretraining batch (a stand-in loss: the convolutions, BatchNorms
    and ReLUs run as in training)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        features = model(images)
    features.float().square().mean().backward()


def dram_copy_gbps(mib: int) -> float:
    """GB/s of a copy between two buffers of ``mib`` MiB each (read + write counted)."""
    source = torch.ones(mib * (1 << 20) // 4)
    target = torch.empty_like(source)
    return round(2 * source.numel() * 4 / best_seconds(lambda: target.copy_(source), REPEATS) / 1e9, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (the encoder sees 2x images)")
    parser.add_argument("--sk-ratio", type=float, default=0.0, help="Selective Kernels (0: the plain encoder)")
    parser.add_argument("--no-keep-freed-memory", action="store_true", help="glibc's default allocation")
    parser.add_argument("--no-fused-kernels", action="store_true",
                        help="PyTorch's separate BatchNorm, add and ReLU ops instead of simclrv2.models.bn_relu's")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--dram-copy-mib", type=int, default=1024,
                        help="size of each buffer of the memory-speed copy; more than the CPU's caches hold")
    args = parser.parse_args(argv)
    applied = False if args.no_keep_freed_memory else keep_freed_memory()
    fused = use_fused_kernels(not args.no_fused_kernels)  # as a CPU session does with run.fused_kernels
    torch.set_flush_denormal(True)
    model = resnet(18, args.width, cifar_stem=True, in_channels=1, sk_ratio=args.sk_ratio)
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(2 * args.batch, 1, 28, 28).to(memory_format=torch.channels_last)

    def step() -> None:
        encoder_step(model, images, args.precision)

    step_s = best_seconds(step, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    stem_channels = round(64 * args.width)
    record = {"bench": "step_profile", "width": args.width, "sk_ratio": args.sk_ratio, "precision": args.precision,
              "batch": args.batch,
              "keep_freed_memory": applied, "fused_kernels": fused, "step_s": round(step_s, 4),
              "ops": [{"name": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
                       "share": round(e.self_cpu_time_total / total, 3)} for e in ops[:args.rows]],
              **bandwidth((2 * args.batch, stem_channels, 28, 28), dtype, args.dram_copy_mib),
              **cpu_kind(), "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    print(json.dumps(record))
    for op in record["ops"]:
        print(f"{op['name']:<45} {op['calls']:>4} calls {op['self_ms']:>9.1f} ms {op['share']:>6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
