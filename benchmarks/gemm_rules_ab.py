"""A/B of the convolution GEMM rules within one process, step by step: the fair test where speed moves between runs.

    python benchmarks/gemm_rules_ab.py --width 1 --precision fp32 --rules default none --pairs 8

On some machines a whole process runs 20 % faster or slower than the next one, so two ``pretrain_throughput.py``
runs cannot show a change of a few percent. Here one process builds the encoder once and times forward + backward
of a pretraining batch (``--batch`` pairs, so 2x one-channel 28 px images, channels_last, bf16 autocast or fp32)
under each rule set of ``pretrain_throughput.py --gemm-rules`` in turn: A B, then B A, ...
(``simclrv2.models.conv_rules`` reads its rules at every call). Each pair of steps gives a ratio; the table gives
each set's median step time and the median and range of the paired ratios (first set's time over the other's: above 1
means the other is faster).
Needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from simclrv2.models import resnet
from simclrv2.models.cpu_kernels import use_fused_kernels
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from ab_rounds import median_seconds, paired_ratio, rotated_rounds  # noqa: E402
from pretrain_throughput import GEMM_RULE_SETS, use_gemm_rules  # noqa: E402
from step_profile import encoder_step  # noqa: E402


def step_seconds(model: torch.nn.Module, images: torch.Tensor, precision: str) -> float:
    """One forward + backward of the encoder (the gradients are dropped after)."""
    start = time.perf_counter()
    encoder_step(model, images, precision)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def interleaved(model: torch.nn.Module, images: torch.Tensor, precision: str, rules: list[str], pairs: int,
                warmup: int) -> dict[str, list[float]]:
    """Seconds per step under each rule set, alternating A B / B A so that neither always runs first."""
    def timed(name: str) -> float:
        use_gemm_rules(name)
        return step_seconds(model, images, precision)

    try:
        return rotated_rounds(rules, timed, pairs, warmup)
    finally:
        use_gemm_rules("default")


def summary(seconds: dict[str, list[float]]) -> dict:
    first, *others = seconds
    return {**median_seconds(seconds),
            **{f"{first}_over_{other}": paired_ratio(seconds[first], seconds[other]) for other in others}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (the encoder sees 2x images)")
    parser.add_argument("--rules", nargs="+", choices=tuple(GEMM_RULE_SETS), default=["default", "none"],
                        help="the rule sets to compare (pretrain_throughput.py --gemm-rules), the first against each")
    parser.add_argument("--pairs", type=int, default=8, help="timed steps per rule set")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per rule set first")
    parser.add_argument("--no-fused-kernels", action="store_true")
    args = parser.parse_args(argv)
    if len(set(args.rules)) < 2 or len(set(args.rules)) != len(args.rules):
        parser.error("--rules needs two or more different rule sets")
    if args.pairs < 1 or args.warmup < 0:
        parser.error("--pairs must be at least 1 and --warmup at least 0")
    torch.set_flush_denormal(True)
    keep_freed_memory()
    fused = use_fused_kernels(not args.no_fused_kernels)
    torch.manual_seed(0)
    model = resnet(18, args.width, cifar_stem=True, in_channels=1).to(memory_format=torch.channels_last)
    images = torch.randn(2 * args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    seconds = interleaved(model, images, args.precision, args.rules, args.pairs, args.warmup)
    result = {"bench": "gemm_rules_ab", "width": args.width, "precision": args.precision, "batch": args.batch,
              "pairs": args.pairs, "fused_kernels": fused, "rules": args.rules, **summary(seconds),
              "steps_s": {name: [round(s, 4) for s in times] for name, times in seconds.items()},
              **cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
