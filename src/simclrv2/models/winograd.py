"""The three passes of a float32 3×3 convolution (stride 1, padding 1) by Winograd's F(2×2, 3×3).

The compiled kernel (``kernels/winograd_conv.cpp``) does the per-tile work: the input and output transforms and
the 16 GEMMs over channels. What is per weight, not per pixel, lives here: the kernel's transform ``U = G g Gᵀ``
for forward, the same for the input gradient (the convolution of the output gradient with the kernel flipped and
its channels swapped), and ``dW = Gᵀ dU G`` after the kernel has summed ``dU`` over the tiles. These are a few
thousand flops per weight, against the millions per weight of the passes themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# F(2x2, 3x3)'s kernel transform: U = G g G^T is the 4x4 transformed kernel of a 3x3 g.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# The kernel's GEMMs read U in strips of this many output channels.
STRIP = 16


def _g(like: Tensor) -> Tensor:
    return torch.tensor(_G, dtype=like.dtype, device=like.device)


def transformed_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) -> G g Gᵀ for every channel pair, packed as the kernel reads it: (16, K/16, C, 16), the 4×4
    positions outer, then strips of 16 outputs, the inputs and the strip's outputs."""
    k, c = weight.shape[:2]
    g = _g(weight)
    u = torch.einsum("ai,kcij,bj->abck", g, weight, g)  # (4, 4, C, K)
    return u.reshape(16, c, k // STRIP, STRIP).permute(0, 2, 1, 3).contiguous()


def weight_from_transformed(du: Tensor, out_channels: int, in_channels: int) -> Tensor:
    """The kernel's (16, C, K) sum dU -> the weight gradient Gᵀ dU G, (K, C, 3, 3), laid out channels_last like
    the encoder's weights."""
    g = _g(du)
    grad = torch.einsum("ai,abck,bj->kcij", g, du.view(4, 4, in_channels, out_channels), g)
    return grad.contiguous(memory_format=torch.channels_last)


def forward(kernels: Any, x: Tensor, weight: Tensor) -> Tensor:
    """conv2d(x, weight, padding=1), x float32 channels_last."""
    return kernels.winograd_conv3x3(x, transformed_weight(weight))


def input_grad(kernels: Any, grad_out: Tensor, weight: Tensor) -> Tensor:
    """dL/dx: the same convolution of the output gradient with the kernel flipped and its channels swapped."""
    swapped = weight.flip(2, 3).transpose(0, 1)
    return kernels.winograd_conv3x3(grad_out.contiguous(memory_format=torch.channels_last),
                                    transformed_weight(swapped))


def weight_grad(kernels: Any, x: Tensor, grad_out: Tensor) -> Tensor:
    """dL/dW, float32, channels_last."""
    du = kernels.winograd_weight_grad(x, grad_out.contiguous(memory_format=torch.channels_last))
    return weight_from_transformed(du, grad_out.shape[1], x.shape[1])
