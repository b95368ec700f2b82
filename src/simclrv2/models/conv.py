"""A 2-D convolution that runs passes as GEMMs over the input's patches where oneDNN's CPU kernels are slow.

On CPUs, oneDNN's bf16 convolutions fall far below the machine's GEMM peak on the tiny maps of ResNet's last
stages at 28-32 px inputs. On a 2-core AMX Xeon at batch 512 (``benchmarks/conv_shapes.py`` times every pass
both ways), a 512->512 3×3 conv on 4×4 maps took 44 ms forward, 45 ms backward-data and 150 ms backward-weights
in oneDNN against 25, 27 and 27 ms as GEMMs over its patches (an im2col laid out channels-last, so a
channels_last input is copied in runs of its channels). The patches cost a copy of nine times the input whatever
the product's width, so the GEMM pays only where that width is large: at 256 channels on 4×4 maps oneDNN's
forward was faster, while its weight gradient was slower at every width. ``GEMM_RULES`` holds what
was measured; a pass runs as a GEMM, in bf16/fp16 on a CPU where oneDNN runs AMX, where a rule covers it
(on oneDNN's AVX-512-BF16 kernels, the same CPU capped below AMX, the GEMMs measured slower):

- forward ``patches @ W^T``;
- backward-data (stride 1) as the forward of the output gradient with the flipped, transposed kernel; at stride
  2 as one GEMM per phase of the input (its even and odd rows and columns: each phase reads only the kernel taps
  that reach it, so every input pixel is one fp32 sum rounded once, where a single GEMM over all nine taps would
  sum nine bf16-rounded overlapping parts);
- backward-weights ``grad^T @ patches``, from the patches forward made when forward is a GEMM too.

A one-channel stem (grayscale images) is the exception: oneDNN is slow for one input channel in every dtype on
every CPU kind measured, so its forward and weight gradient are GEMMs in fp32 too (``SINGLE_CHANNEL_MIN_OUT``). The
patches and the gradient's transpose are the compiled kernels' (:mod:`simclrv2.models.cpu_kernels`) where they are
on, PyTorch's copies otherwise. The other is fp32 where oneDNN runs its AVX2 kernels: there the weight gradient onto
the last stage's 4×4 maps from 256 outputs is a GEMM (``FP32_AVX2_GEMM_RULES``).

Some shapes run our own kernels instead (``direct_passes``; :mod:`simclrv2.models.cpu_kernels`, eager only):
a one-channel stem with fewer outputs than that, forward and weight gradient in fp32 and bf16 (the forward one sweep
over the output at memory speed); on AVX2 or AVX-512, an fp32 16->16 3×3 convolution (width 0.25's first
stage), forward and input gradient, where oneDNN reached 60-70 % of the fp32 peak and the direct kernel ~86 %
(AVX-512); and in fp32 where oneDNN runs its AVX2 kernels, 3×3 stride-1 convolutions from 16 channels by
Winograd's F(4×4, 3×3) or F(2×2, 3×3) (:mod:`simclrv2.models.winograd`, ``FP32_AVX2_WINOGRAD_RULES``), which need 4x
or 2.25x fewer multiplications than oneDNN's direct kernels, already near the machine's peak there (these take the
16-channel layer's passes from the direct kernel too); on a CPU with AVX-512-BF16 and no AMX (AMD's Zen 4, which
splits each 512-bit FMA in two, and Zen 5, where they still measured faster), fp32 3×3 stride-1 convolutions from 32
channels by F(4×4, 3×3) as well (``FP32_AVX512_BF16_WINOGRAD_RULES``).

Every product is an fp32 sum of the same bf16 products rounded once to the output dtype, as oneDNN's; parameters
and state dict are those of :class:`torch.nn.Conv2d`, and anything else (other fp32 convolutions, GPUs, groups,
dilation, bias, larger maps) is :class:`torch.nn.Conv2d` itself.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.models import winograd
from simclrv2.models.cpu_kernels import active_kernels
from simclrv2.runtime import avx512_bf16_without_amx, onednn_runs_avx2, onednn_uses_amx

# (pass, largest output map Ho·Wo, fewest columns of the pass's GEMM: Co forward and for the weight gradient,
# Ci for the input gradient): where the GEMM measured faster than oneDNN (module docstring).
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
# The dtypes the GEMM path and its compiled re-layouts handle.
GEMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Whether oneDNN runs AMX in this process, read once at import as oneDNN reads its ISA cap once: a constant, so
# that torch.compile traces Conv2d without a graph break (a call into the CPU check breaks the graph at every conv).
ONEDNN_USES_AMX = onednn_uses_amx(os.environ.get("ONEDNN_MAX_CPU_ISA"))
# Whether oneDNN runs its AVX2 kernels in this process (FP32_AVX2_GEMM_RULES), read once for the same reasons.
ONEDNN_RUNS_AVX2 = onednn_runs_avx2(os.environ.get("ONEDNN_MAX_CPU_ISA"))
# Whether this is a CPU with AVX-512-BF16 and no AMX running oneDNN's AVX-512 (FP32_AVX512_BF16_WINOGRAD_RULES).
AVX512_BF16_WITHOUT_AMX = avx512_bf16_without_amx(os.environ.get("ONEDNN_MAX_CPU_ISA"))


def _kernels_for(t: Tensor):
    """The compiled re-layout kernels where they may run on ``t`` (switched on, eager, a CPU tensor of a dtype
    they handle; callers check the layout), else None: under torch.compile the PyTorch ops below trace into the
    graph, a call into the extension would break it."""
    if torch.compiler.is_compiling():
        return None
    kernels = active_kernels()
    if kernels is None or t.device.type != "cpu":
        return None
    return kernels if t.dtype in GEMM_DTYPES else None


def _patch_kernels_for(x: Tensor):
    """The compiled kernels where they lay out ``x``'s patches (a 4-D channels_last tensor, as a one-channel
    image always is), else None: the one test :func:`patches`, the rules that count on cheap patches and the direct
    kernels use."""
    kernels = _kernels_for(x)
    if kernels is None or x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    return kernels


def patches(x: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """The im2col matrix of ``x`` (N, Ci, H, W): one row per output pixel, (N·Ho·Wo, kh·kw·Ci), the kernel
    offsets outer and the channels inner, so a channels_last ``x`` is copied in runs of Ci (by the compiled kernel
    where it is on: one copy per window row, no padded copy first; 2.5-3x faster than these views' copy)."""
    kernels = _patch_kernels_for(x)
    if kernels is not None:
        return kernels.patches(x, kernel_size, stride, padding)
    n, ci = x.shape[:2]
    padded = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # N, H + 2p, W + 2p, Ci
    windows = padded.unfold(1, kernel_size, stride).unfold(2, kernel_size, stride)  # N, Ho, Wo, Ci, kh, kw
    ho, wo = windows.shape[1:3]
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kernel_size * kernel_size * ci)


def _weight_matrix(weight: Tensor) -> Tensor:
    """(Co, Ci, kh, kw) as (Co, kh·kw·Ci), the column order of :func:`patches` (a view for channels_last)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _rows(t: Tensor) -> Tensor:
    """(N, C, H, W) as (N·H·W, C): a view when ``t`` is channels_last."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_rows(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """(N·H·W, C) rows as an (N, C, H, W) tensor laid out channels_last (a view)."""
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


def _transposed(rows: Tensor) -> Tensor:
    """A (R, C) matrix as a contiguous (C, R) one: PyTorch's strided copy moves bf16 at ~2-5 GB/s, the compiled
    kernel's tiles 2-3x faster."""
    kernels = _kernels_for(rows)
    if kernels is not None and rows.is_contiguous():
        return kernels.transpose(rows)
    return rows.t().contiguous()


def weight_grad_from_patches(grad_out: Tensor, cols: Tensor, weight_shape: torch.Size) -> Tensor:
    """dL/dW = grad^T @ patches, in W's shape (Co, Ci, kh, kw) and channels-last like the encoder's weights.
    The narrower operand is the one transposed: grad^T is copied first where the patches are wider (the GEMM on a
    transposed operand measured 40 % slower there); for a one-channel stem (9 columns of patches against 64 of
    grad) it is (patches^T @ grad)^T with patches^T a view, as copying grad would cost more than the product."""
    co, ci, kh, kw = weight_shape
    rows = _rows(grad_out)
    if cols.shape[1] < co:
        product = (cols.t() @ rows).t().contiguous()
    else:
        product = _transposed(rows) @ cols
    return product.view(co, kh, kw, ci).permute(0, 3, 1, 2)


def weight_grad_by_gemm(x: Tensor, grad_out: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """dL/dW of ``conv2d(x, W, stride, padding)`` (square kernel, no dilation, one group) as one GEMM over the
    input's patches."""
    weight_shape = torch.Size((grad_out.shape[1], x.shape[1], kernel_size, kernel_size))
    return weight_grad_from_patches(grad_out, patches(x, kernel_size, stride, padding), weight_shape)


def conv_by_gemm(x: Tensor, weight: Tensor, stride: int, padding: int) -> tuple[Tensor, Tensor]:
    """``conv2d(x, weight, stride, padding)`` as patches @ W^T, channels_last; also returns the patches, which
    the weight gradient reuses."""
    k = weight.shape[-1]
    cols = patches(x, k, stride, padding)
    ho, wo = ((size + 2 * padding - k) // stride + 1 for size in x.shape[-2:])
    return _from_rows(cols @ _weight_matrix(weight).t(), x.shape[0], ho, wo), cols


def input_grad_by_gemm(grad_out: Tensor, weight: Tensor, padding: int) -> Tensor:
    """dL/dx of a stride-1 ``conv2d(x, weight, padding=padding)``: the transposed convolution of stride 1 is the
    convolution of the output gradient with the kernel flipped and its channels swapped, so it is the output
    gradient's patches @ M with M[(i, j, co), ci] = W[co, ci, k-1-i, k-1-j]. M is built with copies that move whole
    runs of Ci (channels-last W), not a transpose of W."""
    co, ci, k, _ = weight.shape
    flipped = _weight_matrix(weight).view(co, k * k, ci).flip(1)  # kernel offsets reversed
    m = flipped.transpose(0, 1).reshape(k * k * co, ci)
    n, _, ho, wo = grad_out.shape
    cols = patches(grad_out, k, 1, k - 1 - padding)
    return _from_rows(cols @ m, n, ho + k - 1 - 2 * padding, wo + k - 1 - 2 * padding)


def _phase_taps(phase: int, kernel_size: int, stride: int, padding: int) -> list[tuple[int, int]]:
    """(kernel row kh, shift d) of each tap that reaches the input rows ``phase + stride·i``: output row ``i + d``
    reaches row i of the phase through kernel row kh (the forward reads ih = oh·stride + kh - padding)."""
    return [(k, (phase + padding - k) // stride) for k in range(kernel_size) if (phase + padding - k) % stride == 0]


def input_grad_by_phases(grad_out: Tensor, weight: Tensor, stride: int, padding: int,
                         input_size: tuple[int, int]) -> Tensor:
    """dL/dx of ``conv2d(x, weight, stride, padding)`` (square kernel, no dilation, one group) with x of
    ``input_size``, as one GEMM per phase: the input pixels (phase_h + stride·i, phase_w + stride·j) get the sum
    over the taps reaching them of grad_out[i + dh, j + dw] @ W[:, :, kh, kw], so their patches are the output
    gradient's shifted views side by side and each pixel is one sum. Laid out channels_last."""
    n, _, out_h, out_w = grad_out.shape
    in_channels, k = weight.shape[1], weight.shape[-1]
    height, width = input_size
    taps_h = [_phase_taps(phase, k, stride, padding) for phase in range(min(stride, height))]
    taps_w = [_phase_taps(phase, k, stride, padding) for phase in range(min(stride, width))]
    # pixels no tap reaches (a 1x1 kernel at stride 2) have a zero gradient; otherwise every pixel is written
    make = grad_out.new_empty if all(taps_h) and all(taps_w) else grad_out.new_zeros
    grad_x = make((n, height, width, in_channels)).permute(0, 3, 1, 2)  # channels_last
    tap_weights = weight.permute(2, 3, 0, 1)  # (kh, kw, Co, Ci): each tap's matrix
    for phase_h, phase_taps_h in enumerate(taps_h):
        for phase_w, phase_taps_w in enumerate(taps_w):
            taps = [(th, tw) for th in phase_taps_h for tw in phase_taps_w]
            if not taps:
                continue
            rows, columns = len(range(phase_h, height, stride)), len(range(phase_w, width, stride))
            # zero rows and columns around grad_out where a shifted view reaches past it
            shifts_h, shifts_w = [dh for (_, dh), _ in taps], [dw for _, (_, dw) in taps]
            top, left = max(0, -min(shifts_h)), max(0, -min(shifts_w))
            bottom = max(0, rows - 1 + max(shifts_h) - (out_h - 1))
            right = max(0, columns - 1 + max(shifts_w) - (out_w - 1))
            padded = F.pad(grad_out, (left, right, top, bottom)) if top or bottom or left or right else grad_out
            views = [padded[:, :, top + dh:top + dh + rows, left + dw:left + dw + columns]
                     for (_, dh), (_, dw) in taps]
            phase_patches = torch.cat(views, dim=1).contiguous(memory_format=torch.channels_last)
            phase_weights = torch.cat([tap_weights[kh, kw] for (kh, _), (kw, _) in taps])  # (taps·Co, Ci)
            grad_x[:, :, phase_h::stride, phase_w::stride] = _from_rows(
                _rows(phase_patches) @ phase_weights, n, rows, columns)
    return grad_x


def input_grad_as_gemms(grad_out: Tensor, weight: Tensor, stride: int, padding: int,
                        input_size: tuple[int, int]) -> Tensor:
    """dL/dx as the GEMM form of its stride: one GEMM over the output gradient's patches at stride 1
    (:func:`input_grad_by_gemm`), one per input phase otherwise (:func:`input_grad_by_phases`)."""
    if stride == 1:
        return input_grad_by_gemm(grad_out, weight, padding)
    return input_grad_by_phases(grad_out, weight, stride, padding, input_size)


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


def _grad_by_onednn(which: int, grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """oneDNN's input (``which`` 0) or weight (1) gradient alone, as autograd asks for it."""
    mask = (which == 0, which == 1, False)
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, (stride, stride), (padding, padding),
                                               (1, 1), False, (0, 0), 1, mask)[which]


class _CpuConv(torch.autograd.Function):
    """conv2d whose ``passes`` run as GEMMs over patches, ``direct`` passes as the compiled direct kernels and the
    others as oneDNN's kernels. Keeps for backward only what the gradients it will compute need: forward's patches
    for a GEMM weight gradient, x where a pass reads it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, stride: int, padding: int, passes: frozenset[str],
                direct: frozenset[str] = frozenset()) -> Tensor:
        cols = None
        if "forward" in direct:
            out = _direct_forward(x, weight, padding)
        elif "forward" in passes:
            out, cols = conv_by_gemm(x, weight, stride, padding)
        else:
            out = F.conv2d(x, weight, None, stride, padding)
        needs_grad_x, needs_grad_w = ctx.needs_input_grad[:2]
        x_free_grad_x = "backward-data" in passes or "backward-data" in direct  # input gradients not reading x
        gemm_grad_w = needs_grad_w and "backward-weights" in passes and "backward-weights" not in direct
        keep_cols = gemm_grad_w and cols is not None
        needs_x = (needs_grad_x and not x_free_grad_x) or (needs_grad_w and not keep_cols)
        ctx.save_for_backward(cols if keep_cols else None, weight, x if needs_x else None)
        ctx.stride, ctx.padding, ctx.passes, ctx.direct = stride, padding, passes, direct
        ctx.input_size = tuple(x.shape[-2:])
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        cols, weight, x = ctx.saved_tensors
        s, p, passes, direct = ctx.stride, ctx.padding, ctx.passes, ctx.direct
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if "backward-data" in direct:
                grad_x = _direct_input_grad(grad_out, weight)
            elif "backward-data" in passes:
                grad_x = input_grad_as_gemms(grad_out, weight, s, p, ctx.input_size)
            else:
                grad_x = _grad_by_onednn(0, grad_out, x, weight, s, p)
        if ctx.needs_input_grad[1]:
            if "backward-weights" in direct:
                grad_w = _direct_weight_grad(x, grad_out, weight, p)
            elif "backward-weights" not in passes:
                grad_w = _grad_by_onednn(1, grad_out, x, weight, s, p)
            elif cols is not None:
                grad_w = weight_grad_from_patches(grad_out, cols, weight.shape)
            else:
                grad_w = weight_grad_by_gemm(x, grad_out, weight.shape[-1], s, p)
        return grad_x, grad_w, None, None, None, None


def _direct_kernels() -> Any:
    """The compiled kernels, on whenever a direct pass was planned (a session switches them once, before training)."""
    kernels = active_kernels()
    if kernels is None:
        raise RuntimeError("a direct convolution pass was planned in forward but the compiled CPU kernels were "
                           "switched off before its backward: switch them (use_fused_kernels) between steps only")
    return kernels


def _direct_kernel(name: str, kernel_size: int, padding: int, in_channels: int, out_channels: int,
                   dtype: torch.dtype, kernels: Any) -> tuple[str, int | None]:
    """Which of our kernels runs pass ``name`` of a shape ``direct_passes`` gave them: ("stem", None) for one
    input channel, ("winograd", m) where a Winograd rule covers the pass, else ("direct-16", None). The one choice
    that the passes below make and that ``simclrv2 info`` names."""
    if in_channels == 1:
        return "stem", None
    tile = winograd_tile(name, kernel_size, padding, in_channels, out_channels, dtype, kernels)
    return ("winograd", tile) if tile is not None else ("direct-16", None)


def _direct_weight_grad(x: Tensor, grad_out: Tensor, weight: Tensor, padding: int) -> Tensor:
    """The weight gradient of a shape ``direct_passes`` gives to our kernels: a stem's, or Winograd's; in the
    weight's dtype."""
    kernels = _direct_kernels()
    kind, tile = _direct_kernel("backward-weights", weight.shape[-1], padding, x.shape[1], grad_out.shape[1],
                                x.dtype, kernels)
    if kind == "stem":
        return kernels.stem_conv_weight_grad(x, grad_out, weight.shape[-1], padding).to(weight.dtype)
    return winograd.weight_grad(kernels, x, grad_out, tile)


def _direct_forward(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """The forward of a shape ``direct_passes`` gives to our kernels: the stem's, Winograd's or the 16-channel
    one."""
    kernels = _direct_kernels()
    kind, tile = _direct_kernel("forward", weight.shape[-1], padding, x.shape[1], weight.shape[0], x.dtype, kernels)
    if kind == "stem":
        return kernels.stem_conv_forward(x, weight, padding)
    if kind == "winograd":
        return winograd.forward(kernels, x, weight, tile)
    return kernels.direct_conv3x3(x, weight, False)


def _direct_input_grad(grad_out: Tensor, weight: Tensor) -> Tensor:
    """The input gradient of a shape ``direct_passes`` gives to our kernels (all 3×3 with padding 1): Winograd's or
    the 16-channel one."""
    kernels = _direct_kernels()
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    kind, tile = _direct_kernel("backward-data", 3, 1, weight.shape[1], weight.shape[0], grad_out.dtype, kernels)
    if kind == "winograd":
        return winograd.input_grad(kernels, grad_out, weight, tile)
    return kernels.direct_conv3x3(grad_out, weight, True)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a CPU convolution of ``x`` computes in: autocast's where it is on (float64 stays float64)."""
    if torch.is_autocast_enabled("cpu") and x.dtype != torch.float64:
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _direct_engine(name: str, conv: nn.Conv2d, dtype: torch.dtype) -> str:
    """The name ``simclrv2 info`` gives the kernel of ours that runs a pass ``direct_passes`` gave them."""
    kind, tile = _direct_kernel(name, conv.kernel_size[0], conv.padding[0], conv.in_channels, conv.out_channels,
                                dtype, active_kernels())
    return {"stem": "stem kernel", "winograd": f"Winograd F({tile}x{tile})",
            "direct-16": "direct 16-channel kernel"}[kind]


def _library_engine(x: Tensor) -> str:
    """The library PyTorch hands a convolution of ``x`` to when ours do not take it: oneDNN on the CPU, cuDNN on
    CUDA where it is on (it is, unless switched off), else PyTorch's own kernels."""
    if x.device.type == "cpu":
        return "oneDNN"
    if x.device.type == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
        return "cuDNN"
    return "PyTorch"


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (same parameters and checkpoints) whose passes run on CPU as GEMMs over patches
    where ``GEMM_RULES`` says they are faster than oneDNN's, or as our kernels (direct or Winograd) where
    ``direct_passes`` does."""

    def _plan(self, x: Tensor, dtype: torch.dtype) -> tuple[frozenset[str], frozenset[str]]:
        """The passes of this call that run as GEMMs and those that run the direct kernels (only passes that will
        run: no backward without grad)."""
        none = frozenset(), frozenset()
        if x.device.type != "cpu" or x.dim() != 4:
            return none
        if self.groups != 1 or self.dilation != (1, 1) or self.bias is not None or self.padding_mode != "zeros":
            return none
        k, (s, s_w), (p, p_w) = self.kernel_size, self.stride, self.padding
        if k[0] != k[1] or s != s_w or not isinstance(p, int) or p != p_w or p >= k[0]:
            return none
        ho, wo = ((size + 2 * p - k[0]) // s + 1 for size in x.shape[-2:])
        layout_kernels = _patch_kernels_for(x)
        passes = gemm_passes(s, ho * wo, self.in_channels, self.out_channels, dtype,
                             compiled_layouts=layout_kernels is not None)
        direct = direct_passes(s, k[0], p, self.in_channels, self.out_channels, dtype, layout_kernels)
        if not (torch.is_grad_enabled() and x.requires_grad):
            passes, direct = passes - {"backward-data"}, direct - {"backward-data"}
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            passes, direct = passes - {"backward-weights"}, direct - {"backward-weights"}
        return passes - direct, direct

    def engines(self, x: Tensor) -> dict[str, str]:
        """Where each pass of a call on ``x`` runs, by the same plan as :meth:`forward`: "oneDNN", "GEMM", a kernel
        of ours ("Winograd F(4x4)", "direct 16-channel kernel", "stem kernel"), or off the CPU "cuDNN" ("PyTorch"
        where cuDNN is off); passes that will not run (no gradient asked) are left out. What ``simclrv2 info``
        prints."""
        dtype = _compute_dtype(x)
        passes, direct = self._plan(x, dtype)
        will_run = ["forward"]
        if torch.is_grad_enabled() and x.requires_grad:
            will_run.append("backward-data")
        if torch.is_grad_enabled() and self.weight.requires_grad:
            will_run.append("backward-weights")
        library = _library_engine(x)
        return {name: _direct_engine(name, self, dtype) if name in direct else "GEMM" if name in passes else library
                for name in will_run}

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        passes, direct = self._plan(x, dtype)
        if not passes and not direct:
            return super().forward(x)
        # cast as autocast would for conv2d; the Function then runs outside autocast
        x, weight = x.to(dtype), self.weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _CpuConv.apply(x, weight, self.stride[0], self.padding[0], passes, direct)
