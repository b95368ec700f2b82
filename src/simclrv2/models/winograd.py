"""The three passes of a float32 3×3 convolution (stride 1, padding 1) by Winograd's F(m×m, 3×3), m = 2 or 4.

The compiled kernel (``kernels/winograd_conv.cpp``) does the per-tile work: the input and output transforms and
the GEMMs over channels, one per position of the (m+2)×(m+2) transformed tile. Per weight, not per pixel, are the
kernel's transform ``U = G g Gᵀ`` for forward, the same for the input gradient (the convolution of the output
gradient with the kernel flipped and its channels swapped), and ``dW = Gᵀ dU G`` after the kernel has summed ``dU``
over the tiles. These are a few hundred flops per weight, against the millions per weight of the passes themselves,
but they are paid every call whatever the batch, so they are compiled too (``kernels/winograd_weights.cpp``: one
pass each, written in the layout its reader wants). The same transforms in PyTorch ops stay here as the tests'
reference: one GEMM with the Kronecker product G ⊗ G over all channel pairs (``U = (G ⊗ G) vec(g)``) and a copy
into the kernel's layout (``benchmarks/winograd_transform_ab.py`` times the three ways, ``torch.einsum`` the
first).

F(2×2, 3×3) needs 16 products per channel pair for 4 outputs (2.25× fewer than a direct convolution), F(4×4, 3×3)
36 for 16 (4× fewer) but with larger transform entries, so about one decimal digit less float32 accuracy; both
are checked against float64 in ``tests/test_winograd_conv.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# The kernel transforms: U = G g Gᵀ is the (m+2)×(m+2) transformed kernel of a 3×3 g, per output tile width m.
_G = {
    2: ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
    4: ((1 / 4, 0.0, 0.0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6), (0.0, 0.0, 1.0)),
}
TILES = tuple(_G)
# The kernel's GEMMs read U in strips of this many output channels.
STRIP = 16
# The most memory the weight gradient's per-thread partial sums of dU may take: each thread's full copy is
# (m+2)² C K floats (37.7 MB for F(4×4) at 512 channels), so a 64-thread CPU would otherwise hold 2.4 GB for one
# layer; past this the kernel sums the positions in groups (a pass over the tiles each, transforms recomputed).
# On 2-4 threads every layer of a ResNet fits in one group.
PARTIAL_SUMS_BUDGET_BYTES = 256 << 20


def _g(like: Tensor, tile: int) -> Tensor:
    if tile not in _G:
        raise ValueError(f"Winograd tiles are {TILES} outputs wide, not {tile}")
    return torch.tensor(_G[tile], dtype=like.dtype, device=like.device)


def _kron(like: Tensor, tile: int) -> Tensor:
    """G ⊗ G, ((m+2)², 9): row a·(m+2)+b, column i·3+j holds G[a, i]·G[b, j], so that U = G g Gᵀ is
    ``_kron @ g.flatten()`` and dW = Gᵀ dU G is ``_kron.T @ dU.flatten()``."""
    g = _g(like, tile)
    return torch.kron(g, g)


def _transformed(kron: Tensor, taps: Tensor) -> Tensor:
    """``kron @ taps`` over every channel pair, written straight into the kernel's layout ((m+2)², K/16, C, 16): the
    tile's positions outer, then strips of 16 outputs, the inputs and the strip's outputs. ``taps`` is (3, 3, K, C),
    any strides; only its 9·K·C values are copied into that order, not the (m+2)²·K·C result."""
    out_channels, in_channels = taps.shape[2:]
    strips = taps.reshape(9, out_channels // STRIP, STRIP, in_channels).transpose(2, 3).reshape(9, -1)
    return (kron @ strips).view(kron.shape[0], out_channels // STRIP, in_channels, STRIP)


def transformed_weight(weight: Tensor, tile: int = 2) -> Tensor:
    """(K, C, 3, 3) -> G g Gᵀ for every channel pair, packed as the kernel reads it (``_transformed``)."""
    return _transformed(_kron(weight, tile), weight.permute(2, 3, 0, 1))


def transformed_swapped_flipped_weight(weight: Tensor, tile: int = 2) -> Tensor:
    """``transformed_weight(weight.flip(2, 3).transpose(0, 1))`` without making that kernel: the input gradient's.
    Tap (i, j) of the flipped kernel is tap (2-i, 2-j) = 8 - (3i+j) of the kernel, so G ⊗ G's columns reversed."""
    return _transformed(_kron(weight, tile).flip(1), weight.permute(2, 3, 1, 0))  # channels swapped


def weight_from_transformed(du: Tensor, out_channels: int, in_channels: int) -> Tensor:
    """The kernel's ((m+2)², C, K) sum dU -> the weight gradient Gᵀ dU G, (K, C, 3, 3), laid out channels_last
    like the encoder's weights."""
    side = round(du.shape[0] ** 0.5)
    taps = _kron(du, side - 2).T @ du.view(side * side, in_channels * out_channels)  # (9, C·K)
    grad = taps.view(3, 3, in_channels, out_channels).permute(3, 2, 0, 1)  # (K, C, 3, 3)
    return grad.contiguous(memory_format=torch.channels_last)


def forward(kernels: Any, x: Tensor, weight: Tensor, tile: int = 2) -> Tensor:
    """conv2d(x, weight, padding=1), x float32 channels_last."""
    return kernels.winograd_conv3x3(x, kernels.winograd_transformed_weight(weight, tile, False))


def input_grad(kernels: Any, grad_out: Tensor, weight: Tensor, tile: int = 2) -> Tensor:
    """dL/dx: the same convolution of the output gradient with the kernel flipped and its channels swapped."""
    return kernels.winograd_conv3x3(grad_out.contiguous(memory_format=torch.channels_last),
                                    kernels.winograd_transformed_weight(weight, tile, True))


def weight_grad(kernels: Any, x: Tensor, grad_out: Tensor, tile: int = 2) -> Tensor:
    """dL/dW, float32, channels_last."""
    du = kernels.winograd_weight_grad(x, grad_out.contiguous(memory_format=torch.channels_last), tile,
                                      PARTIAL_SUMS_BUDGET_BYTES)
    return kernels.winograd_weight_from_transformed(du)
