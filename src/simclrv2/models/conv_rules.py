"""Which engine runs each pass of a CPU convolution, and the measurements behind each rule: oneDNN's kernels by
default, GEMMs over patches (:mod:`simclrv2.models.conv_gemm`) or our compiled kernels (direct and Winograd;
:mod:`simclrv2.models.cpu_kernels`, :mod:`simclrv2.models.winograd`) where they measured faster on a CPU kind. The
rules are module constants read at call time, so that a benchmark or test can switch them for an A/B.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from simclrv2.models import winograd
from simclrv2.models.conv_gemm import GEMM_DTYPES
from simclrv2.runtime import avx512_bf16_without_amx, onednn_runs_avx2, onednn_uses_amx

# (pass, largest output map Ho·Wo, fewest columns of the pass's GEMM: Co forward and for the weight gradient,
# Ci for the input gradient): where the GEMM measured faster than oneDNN (simclrv2.models.conv's docstring).
# "backward-data-strided" is the input gradient of a strided convolution (input_grad_by_phases). At batch 512 on
# an AMX Xeon (benchmarks/conv_shapes.py --candidates), 3x3 stride 2 onto 4x4 maps took 11.4 against oneDNN's
# 30.6 ms at 256->512, 39.5 against 143.6 at 512->1024 and 4.0 against 4.8 at 128->256, but 1.8 against 1.5 at
# 64->128; onto 7x7 maps 29.4 against 12.6 (128->256). 1x1 stride 2 was faster onto 7x7 maps too (2.4 against 3.2
# ms at 128->256), a case this rule leaves to oneDNN.
GEMM_RULES: tuple[tuple[str, int, int], ...] = (
    ("forward", 16, 512),
    ("backward-data", 16, 512),
    ("backward-data-strided", 16, 128),
    ("backward-weights", 16, 1),
    ("backward-weights", 49, 256),
)
# Added to them where the compiled re-layouts are on (cpu_kernels): with patches ~2.5x cheaper the weight gradient
# as a GEMM also paid on 7x7 output maps from 128 columns (bf16 at batch 512 on an AMX Xeon: 128->128 7.6 ms
# against oneDNN's 10.4, 64->128 stride 2 3.7 against 8.6; width 0.5's step +2 %). At 64 (width 0.25) the pass alone
# was faster too (2.5 against 3.6 ms) but the step was 1.6 % slower, so it stays oneDNN's.
GEMM_RULES_WITH_COMPILED_LAYOUTS: tuple[tuple[str, int, int], ...] = (("backward-weights", 49, 128),)
# The dtypes they apply in: in fp32 oneDNN measured as fast (but see FP32_AVX2_GEMM_RULES).
REDUCED_PRECISION = (torch.bfloat16, torch.float16)
# In fp32 where oneDNN runs its AVX2 kernels (no AVX-512), the weight gradient onto 4x4 maps with 256 or more
# outputs is a GEMM: oneDNN's AVX2 weight gradient is its slowest pass there. At batch 512 (conv_shapes.py
# --candidates --precision fp32) on a 2-core AVX2-only AMD EPYC, 512->512 3x3 took 287 ms against oneDNN's 344,
# 256->512 3x3 stride 2 142 against 272, 1x1 stride 2 17 against 58; on an AMX Xeon with oneDNN held to AVX2 229
# against 274, 129 against 139 and 26 against 34. Narrower (128->128: 22.4 against 18.9 ms on the EPYC) and larger
# maps (256->256 on 7x7: 248 against 220) stayed slower, and the forward on these maps slower or even. Measured
# faster on the EPYC alone and left to oneDNN: 256->512's strided input gradient (116 against 147 ms) and 128->256's
# stride-2 weight gradient onto 7x7 (118 against 144). The medians of three fresh processes with this rule
# (--rounds 3): 311 against 356, 163 against 184 and 21 against 68 ms.
FP32_AVX2_GEMM_RULES: tuple[tuple[str, int, int], ...] = (("backward-weights", 16, 256),)
# In bf16 on a CPU with AVX-512-BF16 and no AMX (AMD's Zen 4, AVX512_BF16_WITHOUT_AMX), the weight gradient of a
# strided convolution onto maps up to 7x7 is a GEMM ("backward-weights-strided": the stride-1 layers' were slower
# as GEMMs there). At batch 512 on a 2-core AMD EPYC with AVX-512-BF16 (conv_shapes.py --width 0.25 1 --precision
# bf16 --candidates, conv-shapes-candidates-bf16-f017170-2026-12-04-epyc-avx512bf16-i.jsonl): 256->512 3x3 stride 2
# 57 ms against oneDNN's 105, its 1x1 shortcut 7.1 against 39.2, 128->256 3x3 stride 2 onto 7x7 48.7 against 95.5;
# width 0.25's 64->128 4.7 against 6.8 and 0.7 against 3.3, 32->64 3x3 5.4 against 6.7. The 1x1 shortcuts onto 7x7
# maps were a little slower (7.4 against 6.1, 0.9 against 0.6 ms) but are left in the rule, which has no kernel size;
# the stride-1 layers' weight gradients (256->256 at 7 px 88.8 against 80.2) and the forward passes stay oneDNN's.
# On Zen 5 (machine j) the bf16 step with every rule took 0.981x (0.942-0.992) the time without any at width 1, even
# at 0.25 (gemm_rules_ab.py --precision bf16 --rules default none, gemm-rules-ab-bf16-5b73545-…-zen5-j.jsonl).
AVX512_BF16_GEMM_RULES: tuple[tuple[str, int, int], ...] = (("backward-weights-strided", 49, 1),)
# In fp32 where oneDNN runs its AVX2 kernels, a 3x3 convolution with stride 1 and padding 1 runs Winograd's F(m x m,
# 3x3) (simclrv2.models.winograd; oneDNN has no Winograd path on AVX2) for the passes and channel counts here:
# (pass, fewest, most channels, in and out alike, tile width m); the first rule that covers a pass decides.
# F(4x4, 3x3) needs 4x fewer multiplications than a direct convolution, F(2x2, 3x3) 2.25x. At batch 512 on a 2-core
# AVX2-only AMD EPYC (machine h), medians of three fresh processes (conv_shapes.py --width 0.25 1 --precision fp32
# --rounds 3 at commit bfe5a99; that file was lost with the machine), forward / input gradient / weight gradient in
# ms, F(4x4) against oneDNN (the 16-channel forward and input gradient: against the direct kernel): 16->16 at 28 px
# 8.1 / 7.9 / 8.5 against 11.1 / 11.0 / 12.3; 32->32 at 14 px 6.7 / 6.6 / 7.8 against 10.7 / 10.8 / 13.9; 64->64 at
# 7 px 5.5 / 5.5 / 6.6 against 10.6 / 10.6 / 13.0; 128->128 at 4 px 6.0 / 6.4 / 8.2 against 11.9 / 12.0 / 18.2;
# 64->64 at 28 px 66 / 65 / 83 against 168 / 169 / 249; 128->128 at 14 px 72 / 72 / 92 against 161 / 162 / 215;
# 256->256 at 7 px 73 / 73 / 95 against 154 / 156 / 209; 512->512 at 4 px 85 / 83 / 155 against 177 / 179 / 314.
# The width-1 encoder step in one process, the rule sets alternated (gemm_rules_ab.py --width 1 --precision fp32
# --rules default winograd-f2 no-winograd, same commit and machine, file lost too) took 0.76x the time of F(2x2)
# from 32 channels (WINOGRAD_F2 in benchmarks/pretrain_throughput.py) and 0.54x oneDNN's.
FP32_AVX2_WINOGRAD_RULES: tuple[tuple[str, int, int, int], ...] = (
    ("forward", 16, 512, 4),
    ("backward-data", 16, 512, 4),
    ("backward-weights", 16, 512, 4),
)
# The same for fp32 on a CPU with AVX-512-BF16 and no AMX (runtime.avx512_bf16_without_amx: AMD's Zen 4), where
# oneDNN runs its AVX-512 kernels but the CPU splits each 512-bit FMA in two, so the AVX2 Winograd kernel's 4x fewer
# multiplications still pay. At batch 512 on a 2-core AMD EPYC with AVX-512-BF16 (machine i), medians of three
# fresh processes (conv_shapes.py --width 0.25 1 --precision fp32 bf16 --rounds 3,
# conv-shapes-rounds-1a7033d-2026-12-04-epyc-avx512bf16-i.jsonl), forward / input gradient / weight gradient in ms,
# F(4x4) against oneDNN's AVX-512: 32->32 at 14 px 6.7 / 6.7 / 7.8 against 9.5 / 9.2 / 8.9; 64->64 at 7 px 5.3 /
# 5.0 / 6.5 against 7.8 / 7.8 / 9.2; 128->128 at 4 px 5.1 / 5.6 / 7.2 against 8.5 / 8.9 / 12.3; 64->64 at 28 px 57 /
# 59 / 70 against 132 / 130 / 152; 128->128 at 14 px 60 / 61 / 75 against 127 / 127 / 138; 256->256 at 7 px 65 / 68
# / 117 against 114 / 115 / 122; 512->512 at 4 px 82 / 76 against 140 / 133. 512's weight gradient stays oneDNN's:
# in scratch runs (best of five, four processes) it took 204-237 ms against oneDNN's 197-226. At 16->16 on 28 px
# maps F(4x4) was even with oneDNN forward (10.3-11.2 ms against 11.3-11.4) and slower for the weight gradient
# (10.1-12.1 against 8.5-10.1) in those runs: that layer keeps the direct kernel's forward and input gradient (8.2
# and 8.8 ms against oneDNN's 9.5 and 9.9 in the rounds) and oneDNN's weight gradient. On a Zen 5 EPYC (machine j,
# whose 512-bit FMAs are whole: its bf16 GEMM peak is ~2.1x i's) they still paid: the fp32 encoder step took 0.887x
# (0.868-0.901) the time without them at width 1 and 0.959x at width 0.25 (gemm_rules_ab.py --rules default
# no-winograd, gemm-rules-ab-fp32-winograd-5b73545-2026-12-04-epyc-zen5-j.jsonl). Per pass on j (conv_shapes.py
# --rounds 3, conv-shapes-rounds-1cdaa5e-2026-12-04-epyc-zen5-j.jsonl) F(4x4) was 1.1-1.5x faster except the
# weight gradient at 256 channels (70.8 against 60.5 ms) and 32 (5.7 against 5.0): ~1 % of the step, kept as one set.
FP32_AVX512_BF16_WINOGRAD_RULES: tuple[tuple[str, int, int, int], ...] = (
    ("forward", 32, 512, 4),
    ("backward-data", 32, 512, 4),
    ("backward-weights", 32, 256, 4),
)
# A stride-1 convolution of a one-channel input (a grayscale image into the stem) with at least this many outputs
# runs forward and the weight gradient as GEMMs in every dtype, whatever oneDNN runs: for 1->64 at 28 px and batch
# 512 on an AMX Xeon (benchmarks/conv_shapes.py), oneDNN's two passes took 35.9 ms in bf16, 29.3 ms in bf16 held to
# AVX-512-BF16, 42.6 ms in fp32 and 59.1 ms in fp32 held to AVX2; the GEMMs with the compiled patches 7.8, 13.0,
# 16.1 and 13.6 ms. At 16 outputs the two were even, and with three input channels oneDNN was faster.
SINGLE_CHANNEL_MIN_OUT = 64
# Whether direct_passes may give passes to the direct kernels: read at call time, so that a benchmark or test can
# time or compare oneDNN's passes in their place.
DIRECT_KERNELS = True
# Whether oneDNN runs AMX in this process, read once at import as oneDNN reads its ISA cap once: a constant, so
# that torch.compile traces Conv2d without a graph break (a call into the CPU check breaks the graph at every conv).
ONEDNN_USES_AMX = onednn_uses_amx(os.environ.get("ONEDNN_MAX_CPU_ISA"))
# Whether oneDNN runs its AVX2 kernels in this process (FP32_AVX2_GEMM_RULES), read once for the same reasons.
ONEDNN_RUNS_AVX2 = onednn_runs_avx2(os.environ.get("ONEDNN_MAX_CPU_ISA"))
# Whether this is a CPU with AVX-512-BF16 and no AMX running oneDNN's AVX-512 (FP32_AVX512_BF16_WINOGRAD_RULES).
AVX512_BF16_WITHOUT_AMX = avx512_bf16_without_amx(os.environ.get("ONEDNN_MAX_CPU_ISA"))


def gemm_passes(stride: int, out_area: int, in_channels: int, out_channels: int,
                dtype: torch.dtype = torch.bfloat16, compiled_layouts: bool = False) -> frozenset[str]:
    """Which passes of a CPU convolution run as GEMMs: forward and the weight gradient of a stride-1, one-channel
    input with ``SINGLE_CHANNEL_MIN_OUT`` or more outputs in any dtype on any CPU; otherwise, in bf16/fp16, none unless
    oneDNN runs on AMX, where the rules were measured (with oneDNN held to AVX-512-BF16 on the same CPU, the GEMMs
    made width 1's step 8 % slower), plus ``GEMM_RULES_WITH_COMPILED_LAYOUTS`` where the compiled re-layouts run; in
    bf16 on a CPU with AVX-512-BF16 and no AMX, ``AVX512_BF16_GEMM_RULES``; in fp32, ``FP32_AVX2_GEMM_RULES`` where
    oneDNN runs AVX2, none elsewhere. The rules are read at call time (benchmarks switch them for an A/B)."""
    if stride == 1 and in_channels == 1 and out_channels >= SINGLE_CHANNEL_MIN_OUT and dtype in GEMM_DTYPES:
        return frozenset({"forward", "backward-weights"})
    if dtype == torch.float32 and ONEDNN_RUNS_AVX2:
        rules = FP32_AVX2_GEMM_RULES if fp32_math_is_exact() else ()
    elif ONEDNN_USES_AMX and dtype in REDUCED_PRECISION:
        rules = GEMM_RULES + (GEMM_RULES_WITH_COMPILED_LAYOUTS if compiled_layouts else ())
    elif AVX512_BF16_WITHOUT_AMX and dtype == torch.bfloat16:
        rules = AVX512_BF16_GEMM_RULES
    else:
        return frozenset()
    columns = {"forward": out_channels, "backward-data": in_channels, "backward-data-strided": in_channels,
               "backward-weights": out_channels, "backward-weights-strided": out_channels}
    passes = {name for name, max_area, min_columns in rules
              if out_area <= max_area and columns[name] >= min_columns}
    if stride != 1:  # a strided input gradient has its own rule and form (input_grad_by_phases)
        passes.discard("backward-data")
        if "backward-data-strided" in passes:
            passes.add("backward-data")
        if "backward-weights-strided" in passes:  # the same form as stride 1's, a rule of its own
            passes.add("backward-weights")
    passes -= {"backward-data-strided", "backward-weights-strided"}
    return frozenset(passes)


def fp32_math_is_exact() -> bool:
    """False while ``run.precision = "bf16-math"`` lets oneDNN multiply fp32 convolutions in bf16 (its fpmath mode,
    ``runtime.set_fp32_math``). Our fp32 kernels (Winograd's, the 16-channel direct kernel, the fp32 GEMM rules) then
    step aside for oneDNN's, so that the mode does what it says; the one-channel stem's kernels stay, exact."""
    conv = getattr(torch.backends.mkldnn, "conv", None)
    return getattr(conv, "fp32_precision", "none") != "bf16"


def fp32_winograd_rules() -> tuple[tuple[str, int, int, int], ...]:
    """The Winograd rules of this CPU kind: ``FP32_AVX2_WINOGRAD_RULES`` where oneDNN runs its AVX2 kernels,
    ``FP32_AVX512_BF16_WINOGRAD_RULES`` on AVX-512-BF16 without AMX, none elsewhere (oneDNN's AVX-512 kernels on
    CPUs with full-width 512-bit units, and AMX, unmeasured against them)."""
    if ONEDNN_RUNS_AVX2:
        return FP32_AVX2_WINOGRAD_RULES
    return FP32_AVX512_BF16_WINOGRAD_RULES if AVX512_BF16_WITHOUT_AMX else ()


def winograd_tile(name: str, kernel_size: int, padding: int, in_channels: int, out_channels: int,
                  dtype: torch.dtype, kernels: Any) -> int | None:
    """The output tile width m of Winograd's F(m×m, 3×3) for this pass of a stride-1 convolution, or None where no
    rule of this CPU kind's (``fp32_winograd_rules``) covers it: fp32 multiplied exactly (``fp32_math_is_exact``),
    3×3 with padding 1, channels in multiples of 16, and the Winograd kernel built (``kernels``, None where off)."""
    rules = fp32_winograd_rules()
    if (not rules or kernels is None or dtype != torch.float32 or not fp32_math_is_exact() or kernel_size != 3
            or padding != 1 or in_channels % winograd.STRIP or out_channels % winograd.STRIP
            or not kernels.has_winograd_conv()):
        return None
    fewer, more = min(in_channels, out_channels), max(in_channels, out_channels)
    return next((tile for rule, fewest, most, tile in rules
                 if rule == name and fewest <= fewer and more <= most), None)


def _is_direct_16(kernel_size: int, padding: int, in_channels: int, out_channels: int, dtype: torch.dtype,
                  kernels: Any) -> bool:
    return (dtype == torch.float32 and in_channels == out_channels == 16 and kernel_size == 3 and padding == 1
            and fp32_math_is_exact() and kernels.has_direct_conv())


def direct_passes(stride: int, kernel_size: int, padding: int, in_channels: int, out_channels: int,
                  dtype: torch.dtype, kernels: Any) -> frozenset[str]:
    """Which passes of a CPU convolution run our compiled kernels (``kernels``, None where they are off):
    measured at batch 512 on a 2-core AMX Xeon (benchmarks/conv_shapes.py), against oneDNN's passes:

    - a one-channel stride-1 input with fewer than ``SINGLE_CHANNEL_MIN_OUT`` outputs, forward and weight gradient,
      fp32 or bf16: 1->16 at 28 px 1.0 ms against 1.9 forward and 2.4 against 3.5-5.0 weight gradient, both dtypes;
      from 64 outputs the GEMMs' forward was as fast or faster;
    - in fp32 where oneDNN runs its AVX2 kernels or on AVX-512-BF16 without AMX, a 3×3 convolution with stride 1
      and padding 1 whose channel counts (multiples of 16) a Winograd rule of the CPU kind covers: Winograd's
      F(m×m, 3×3) (``winograd_tile``);
    - elsewhere, an fp32 16->16 3×3 convolution with stride 1 and padding 1, where the kernel was built (AVX2 with
      FMA, or AVX-512): forward and input gradient 5.2-5.7 ms against oneDNN's 6.2-8.3 at 28 px on AVX-512, 7.8-8.2
      against 8.9-10.0 built for AVX2 with oneDNN held to AVX2 (its weight gradient stays oneDNN's: an own loop was
      at best even with it on AVX-512, and on AVX2 three own loops took 12.6, 14.1 and 15.5 ms against oneDNN's 15.0,
      12.7 and 12.6 in the same runs: no clear win)."""
    if kernels is None or stride != 1 or not DIRECT_KERNELS:
        return frozenset()
    if in_channels == 1 and out_channels < SINGLE_CHANNEL_MIN_OUT and dtype in (torch.float32, torch.bfloat16):
        return frozenset({"forward", "backward-weights"})
    passes = {name for name in ("forward", "backward-data", "backward-weights")
              if winograd_tile(name, kernel_size, padding, in_channels, out_channels, dtype, kernels) is not None}
    if _is_direct_16(kernel_size, padding, in_channels, out_channels, dtype, kernels):
        passes |= {"forward", "backward-data"}
    return frozenset(passes)
