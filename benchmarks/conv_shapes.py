"""Where a training step loses the machine: every convolution shape of the encoder, timed per pass.

    python benchmarks/conv_shapes.py --width 0.25 1 --precision bf16 fp32 --layout channels_last nchw

For each distinct convolution of the CIFAR-stem ResNet-18 at ``--width`` (shapes found by running the real
encoder on a pretraining batch: ``--batch`` pairs, so 2x images, at 28 px), times forward, backward-data and
backward-weights (``aten.convolution_backward`` with one output mask at a time, as autograd calls it) in the
given dtype and memory layout, and reports GFLOP/s and the share of this machine's GEMM peak for that dtype
(measured here with 2048^3 matmuls, the shared bench's gemm_peak protocol). Where the encoder's Conv2d runs a
pass as a GEMM over the input's patches (``simclrv2.models.conv_rules.GEMM_RULES``: small output maps, wide GEMMs,
bf16 only), that GEMM is timed too (forward-gemm, backward-data-gemm, backward-weights-gemm, the last from the
patches forward kept where forward is a GEMM too) and counts in the step instead of oneDNN's pass; likewise our
compiled kernels (direct, or Winograd's where oneDNN runs AVX2) where ``simclrv2.models.conv_rules.direct_passes``
gives them a pass (forward-direct, ...). The last column per pass is the share of the step's convolution time,
weighted by how many layers have the shape. One JSON line per row, then a Markdown table; ``--out`` also writes the
lines to a file. Freed memory is kept for reuse, as training sessions do (``run.keep_freed_memory``): otherwise
glibc maps each large output afresh and its page faults are timed.

Timing needs an otherwise idle machine: nothing else may run (``uptime`` near 0). Each pass is warmed up once
and the best of ``--repeats`` is kept, since the minimum is the least disturbed by the rest of the machine. Where
a whole process runs faster or slower than the next (seen up to 2x for one pass), ``--rounds N`` runs everything in
N fresh processes and reports each pass's median and range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from simclrv2.models import conv, conv_gemm, conv_rules, resnet
from simclrv2.models.cpu_kernels import active_kernels, use_fused_kernels
from simclrv2.provenance import cpu_kind
from simclrv2.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from pretrain_throughput import GEMM_RULE_SETS, use_gemm_rules  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
ONEDNN_PASSES = ("forward", "backward-data", "backward-weights")
PASSES = (*ONEDNN_PASSES, *(f"{p}-gemm" for p in ONEDNN_PASSES), *(f"{p}-direct" for p in ONEDNN_PASSES))


@dataclass(frozen=True)
class ConvShape:
    """One convolution call: input (N, C, H, W), weight (K, C/groups, R, S), stride, padding, groups."""

    batch: int
    in_channels: int
    size: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def gflop(self) -> float:
        """Multiply-adds x 2 of one pass; forward, backward-data and backward-weights each cost the same."""
        macs = (self.batch * self.out_channels * self.out_size**2 * self.in_channels // self.groups
                * self.kernel**2)
        return 2 * macs / 1e9

    def gemm_passes(self, dtype: torch.dtype, layout: torch.memory_format) -> frozenset[str]:
        """The passes the encoder's Conv2d runs as GEMMs for this shape on CPU in ``dtype`` and ``layout`` (with
        the compiled re-layouts' rules where they are on and can lay the input out: channels_last only)."""
        if self.groups != 1:
            return frozenset()
        compiled_layouts = active_kernels() is not None and layout == torch.channels_last
        return conv_rules.gemm_passes(self.stride, self.out_size**2, self.in_channels, self.out_channels, dtype,
                                      compiled_layouts)

    def direct_passes(self, dtype: torch.dtype, layout: torch.memory_format) -> frozenset[str]:
        """The passes the encoder's Conv2d gives to our compiled kernels (channels_last inputs only)."""
        if self.groups != 1 or (layout != torch.channels_last and self.in_channels != 1):
            return frozenset()
        return conv_rules.direct_passes(self.stride, self.kernel, self.padding, self.in_channels, self.out_channels,
                                        dtype, active_kernels())

    def label(self) -> str:
        return (f"{self.in_channels}->{self.out_channels} {self.kernel}x{self.kernel}/{self.stride} "
                f"@{self.size}px")


def encoder_conv_shapes(width: float, batch: int, size: int = 28, in_channels: int = 1) -> Counter[ConvShape]:
    """Every convolution the encoder runs on ``batch`` images, with how many layers share each shape."""
    encoder = resnet(18, width, cifar_stem=True, in_channels=in_channels)
    shapes: Counter[ConvShape] = Counter()

    def record(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        n, c, h, _ = inputs[0].shape
        shapes[ConvShape(n, c, h, module.out_channels, module.kernel_size[0], module.stride[0], module.padding[0],
                         module.groups)] += 1

    hooks = [m.register_forward_hook(record) for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        encoder(torch.zeros(batch, in_channels, size, size))
    for hook in hooks:
        hook.remove()
    return shapes


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_passes(shape: ConvShape, dtype: torch.dtype, layout: torch.memory_format, repeats: int,
                gemms: frozenset[str], reuse_patches: bool, direct: frozenset[str] = frozenset()) -> dict[str, float]:
    """Seconds of each oneDNN pass, with activations, weights and output gradients all in ``layout``, of each
    pass in ``gemms`` as a GEMM (the weight gradient from patches already made when ``reuse_patches``: the
    encoder keeps forward's where forward is a GEMM) and of each pass in ``direct`` as the direct kernels."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape.batch, shape.in_channels, shape.size, shape.size, generator=gen).to(dtype)
    w = torch.randn(shape.out_channels, shape.in_channels // shape.groups, shape.kernel, shape.kernel,
                    generator=gen).to(dtype)
    grad = torch.randn(shape.batch, shape.out_channels, shape.out_size, shape.out_size, generator=gen).to(dtype)
    x, w, grad = (t.contiguous(memory_format=layout) for t in (x, w, grad))
    args = ([shape.stride] * 2, [shape.padding] * 2, [1, 1], False, [0, 0], shape.groups)
    backward = torch.ops.aten.convolution_backward
    seconds = {
        "forward": best_seconds(lambda: torch.ops.aten.convolution(x, w, None, *args), repeats),
        "backward-data": best_seconds(lambda: backward(grad, x, w, None, *args, [True, False, False]), repeats),
        "backward-weights": best_seconds(lambda: backward(grad, x, w, None, *args, [False, True, False]), repeats),
    }
    k, s, p = shape.kernel, shape.stride, shape.padding
    if "forward" in gemms:
        seconds["forward-gemm"] = best_seconds(lambda: conv_gemm.conv_by_gemm(x, w, s, p), repeats)
    if "backward-data" in gemms:
        size = (shape.size, shape.size)
        seconds["backward-data-gemm"] = best_seconds(lambda: conv_gemm.input_grad_as_gemms(grad, w, s, p, size),
                                                     repeats)
    if "backward-weights" in gemms:
        if reuse_patches:
            cols = conv_gemm.patches(x, k, s, p)
            seconds["backward-weights-gemm"] = best_seconds(
                lambda: conv_gemm.weight_grad_from_patches(grad, cols, w.shape), repeats)
        else:
            seconds["backward-weights-gemm"] = best_seconds(lambda: conv_gemm.weight_grad_by_gemm(x, grad, k, s, p),
                                                            repeats)
    if "forward" in direct:
        seconds["forward-direct"] = best_seconds(lambda: conv._direct_forward(x, w, p), repeats)
    if "backward-data" in direct:
        seconds["backward-data-direct"] = best_seconds(lambda: conv._direct_input_grad(grad, w), repeats)
    if "backward-weights" in direct:
        seconds["backward-weights-direct"] = best_seconds(lambda: conv._direct_weight_grad(x, grad, w, p), repeats)
    return seconds


def gemm_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of an n^3 matmul in ``dtype``: the machine's ceiling that the convolutions are held to. The
    product goes into one preallocated tensor, as in the shared bench's gemm_peak.py: a fresh 8-16 MB result per
    call is mmap-ed and page-faulted by glibc every time, which measured half the peak on one machine."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype)
    return 2 * n**3 / best_seconds(lambda: torch.matmul(a, b, out=out), repeats) / 1e9


def candidate_gemm_passes(shape: ConvShape) -> frozenset[str]:
    """Every pass that could run as a GEMM on this shape, rules aside: on output maps up to 7x7 (what
    ``--candidates`` times, to choose ``GEMM_RULES`` from)."""
    if shape.groups != 1 or shape.out_size**2 > 49:
        return frozenset()
    return frozenset({"forward", "backward-data", "backward-weights"})


def rows_for(width: float, batch: int, precision: str, layout: str, repeats: int, peak: float,
             candidates: bool = False) -> list[dict]:
    shapes = encoder_conv_shapes(width, 2 * batch)
    rows = []
    for shape, layers in shapes.items():
        direct = shape.direct_passes(DTYPES[precision], LAYOUTS[layout])
        taken = shape.gemm_passes(DTYPES[precision], LAYOUTS[layout]) - direct
        timed = taken | candidate_gemm_passes(shape) if candidates else taken
        seconds = time_passes(shape, DTYPES[precision], LAYOUTS[layout], repeats, timed, "forward" in taken,
                              direct)
        measured = [p for p in PASSES if p in seconds]
        rows.append({"width": width, "precision": precision, "layout": layout, "shape": shape.label(),
                     "layers": layers, "gflop": round(shape.gflop, 6),  # unrounded enough for the rounds' GFLOP/s
                     **{f"{p}_ms": round(1e3 * seconds[p], 2) for p in measured},
                     **{f"{p}_gflops": round(shape.gflop / seconds[p], 1) for p in measured}})
        # the step pays one form of each pass: the direct kernel's or the GEMM where the encoder takes it
        for onednn in ONEDNN_PASSES:
            paid = (f"{onednn}-direct" if onednn in direct else f"{onednn}-gemm" if onednn in taken else onednn)
            for form in (onednn, f"{onednn}-gemm", f"{onednn}-direct"):
                if form != paid and f"{form}_ms" in rows[-1]:
                    rows[-1][f"{form}_paid"] = False
    stem = rows[0]  # the first convolution reads the images, which need no gradient: training skips its
    for form in ("backward-data", "backward-data-gemm", "backward-data-direct"):  # backward-data, so the step
        stem[f"{form}_paid"] = False  # leaves it out
    add_shares(rows, peak)
    return rows


def add_shares(rows: list[dict], peak: float) -> None:
    """Each pass's share of the GEMM peak and of the step's convolution time (what the step pays)."""
    total = sum(_paid_ms(r, p) for r in rows for p in PASSES)
    for r in rows:
        for p in (p for p in PASSES if f"{p}_ms" in r):
            r[f"{p}_peak_share"] = round(r[f"{p}_gflops"] / peak, 3)
            r[f"{p}_time_share"] = round(_paid_ms(r, p) / total, 3)


def median_rows(rounds: list[list[dict]], peak: float) -> list[dict]:
    """One row per shape from the same rows of several rounds (fresh processes): each pass's median time, with the
    range of the rounds in ``{pass}_ms_range``, and its GFLOP/s and shares from that median. On machines whose
    speed moves between processes, one process's ratio between two passes can mislead."""
    rows = []
    for same in zip(*rounds, strict=True):
        if len({r["shape"] for r in same}) != 1:
            raise ValueError(f"the rounds timed different shapes: {sorted({r['shape'] for r in same})}")
        row = {k: v for k, v in same[0].items() if not k.endswith(("_ms", "_gflops", "_peak_share", "_time_share"))}
        for p in PASSES:
            times = [r[f"{p}_ms"] for r in same if f"{p}_ms" in r]
            if times:
                row[f"{p}_ms"] = round(statistics.median(times), 2)
                row[f"{p}_ms_range"] = [min(times), max(times)]
                row[f"{p}_gflops"] = round(row["gflop"] / row[f"{p}_ms"] * 1e3, 1)
        rows.append(row)
    add_shares(rows, peak)
    return rows


def _paid_ms(row: dict, phase: str) -> float:
    """Milliseconds a training step spends in ``phase`` of every layer of this shape."""
    return 0.0 if row.get(f"{phase}_paid", True) is False else row["layers"] * row.get(f"{phase}_ms", 0.0)


def markdown(rows: list[dict], peaks: dict[str, float]) -> str:
    lines = [f"GEMM peak here: {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peaks.items())}. "
             "Per pass: ms, share of the dtype's GEMM peak, share of the step's convolution time.", "",
             "| width | dtype | layout | shape | layers | " + " | ".join(PASSES) + " |",
             "|---|---|---|---|---|" + "---|" * len(PASSES)]
    for r in rows:
        cells = [f"{r[f'{p}_ms']:.1f} ms, {r[f'{p}_peak_share']:.0%}, {r[f'{p}_time_share']:.0%}"
                 if f"{p}_ms" in r else "–" for p in PASSES]
        lines.append(f"| {r['width']:g} | {r['precision']} | {r['layout']} | {r['shape']} | {r['layers']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--precision", nargs="+", choices=tuple(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--layout", nargs="+", choices=tuple(LAYOUTS), default=["channels_last"])
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (the encoder sees 2x images)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--candidates", action="store_true",
                        help="also time as GEMMs the passes the rules leave to oneDNN on maps up to 7x7 (not "
                             "counted in the step): the evidence GEMM_RULES is chosen from")
    parser.add_argument("--no-fused-kernels", action="store_true",
                        help="the GEMMs' patches and transposes by PyTorch's copies instead of the compiled kernels "
                             "(run.fused_kernels = false)")
    parser.add_argument("--gemm-rules", choices=tuple(GEMM_RULE_SETS), default="default",
                        help="the convolution rule set to time (pretrain_throughput.py --gemm-rules): e.g. "
                             "winograd-f2 times Winograd's F(2x2, 3x3) where the package's rules run F(4x4, 3x3)")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time everything in this many fresh processes, one after another, and report each "
                             "pass's median with the rounds' range (for machines whose speed moves between runs)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.rounds > 1:
        return main_rounds(args, sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()
    fused = use_fused_kernels(not args.no_fused_kernels)  # as a CPU session does with run.fused_kernels
    use_gemm_rules(args.gemm_rules)
    peaks = {p: gemm_peak_gflops(DTYPES[p]) for p in args.precision}
    header = {"bench": "conv_shapes", "fused_kernels": fused, "gemm_rules": args.gemm_rules, **cpu_kind(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "gemm_peak_gflops": {k: round(v, 1) for k, v in peaks.items()}}
    print(json.dumps(header), flush=True)
    rows = []
    for width in args.width:
        for precision in args.precision:
            for layout in args.layout:
                for row in rows_for(width, args.batch, precision, layout, args.repeats, peaks[precision],
                                    args.candidates):
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
    print(markdown(rows, peaks))
    return 0


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option`` and its value (``--rounds 3`` or ``--rounds=3``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


def main_rounds(args: argparse.Namespace, argv: list[str]) -> int:
    """``--rounds N``: run this script N times in fresh processes (each writes its lines to a file), then report
    the medians. The output holds every round's rows (``round`` 0..N-1) and then the medians (``round`` "median")."""
    child_argv = _without_option(_without_option(argv, "--rounds"), "--out")
    headers, rounds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            out = Path(tmp) / f"round-{index}.jsonl"
            done = subprocess.run([sys.executable, __file__, *child_argv, "--out", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(f"conv_shapes: round {index} failed (exit {done.returncode}); its error is above")
            header, *rows = (json.loads(line) for line in out.read_text().splitlines())
            headers.append(header)
            rounds.append([{**r, "round": index} for r in rows])
            print(f"round {index + 1}/{args.rounds} done (GEMM peak {header['gemm_peak_gflops']} GFLOP/s)", flush=True)
    peaks = {p: statistics.median(h["gemm_peak_gflops"][p] for h in headers) for p in args.precision}
    header = {**headers[0], "rounds": args.rounds, "gemm_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
              "gemm_peak_gflops_range": {p: [min(h["gemm_peak_gflops"][p] for h in headers),
                                             max(h["gemm_peak_gflops"][p] for h in headers)] for p in args.precision}}
    medians = []
    for width in args.width:  # the shares are within one step (width, dtype, layout), as one process gives them
        for precision in args.precision:
            for layout in args.layout:
                step = (width, precision, layout)
                group = [[r for r in rows if (r["width"], r["precision"], r["layout"]) == step] for rows in rounds]
                medians += [{**r, "round": "median"} for r in median_rows(group, peaks[precision])]
    lines = [header, *(r for rows in rounds for r in rows), *medians]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    print(markdown(medians, peaks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
