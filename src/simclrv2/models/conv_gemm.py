"""Convolution passes as GEMMs over the input's patches (im2col laid out channels-last): the forward, the input
gradient (stride 1 as one GEMM over the output gradient's patches, strided as one GEMM per input phase) and the weight
gradient. :mod:`simclrv2.models.conv_rules` says where each runs instead of oneDNN's kernels.

Every product is an fp32 sum of the same bf16 products rounded once to the output dtype, as oneDNN's. The patches and
the gradient's transpose are the compiled kernels' (:mod:`simclrv2.models.cpu_kernels`) where they are on, PyTorch's
copies otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from simclrv2.models.cpu_kernels import active_kernels

# The dtypes the GEMM path and its compiled re-layouts handle.
GEMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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


def patch_kernels_for(x: Tensor):
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
    kernels = patch_kernels_for(x)
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
