"""Gaussian blur with a different sigma per image: one grouped convolution per direction for the batch.

docs/recipe.md#blur: sigma is the Gaussian's standard deviation in pixels, never the kernel radius, and the kernel
size is always odd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from simclrv2.augment._inputs import check_probability, check_range
from simclrv2.errors import SimCLRv2Error


def blur_kernel_size(side: int) -> int:
    """Odd size ≈ 10 % of the image side, at least 3: 2·max(1, ⌊side / 20⌋) + 1 (the reference's rule)."""
    return 2 * max(1, side // 20) + 1


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """(B, size) normalised 1-D kernels: k_b(t) ∝ exp(−t² / (2 σ_b²)), t = −r … r, r = size // 2."""
    if size < 1 or size % 2 == 0:
        raise SimCLRv2Error(f"blur kernel size must be odd and positive, got {size}")
    radius = size // 2
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    logits = -(t**2) / (2 * sigma.to(torch.float32).reshape(-1, 1) ** 2)  # (B, size)
    return torch.softmax(logits, dim=1)  # exp / sum, without underflow to 0/0 for tiny sigma


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int | None = None) -> Tensor:
    """Separable Gaussian blur of each image b with its own ``sigma[b]`` (pixels), reflect padding.

    The kernel size defaults to ``blur_kernel_size(min(H, W))``; the two 1-D passes are depthwise
    convolutions over the B·C channels of the batch viewed as one image.
    """
    b, c, height, width = x.shape
    size = kernel_size or blur_kernel_size(min(height, width))
    radius = size // 2
    if radius >= min(height, width):
        raise SimCLRv2Error(f"blur kernel size {size} is too large for {height}x{width} images")
    kernels = gaussian_kernels(sigma, size).to(x.dtype).repeat_interleave(c, dim=0)  # (B·C, size)
    flat = F.pad(x.reshape(1, b * c, height, width), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernels.reshape(b * c, 1, size, 1), groups=b * c)  # vertical: (1, B·C, H, W + 2r)
    flat = F.conv2d(flat, kernels.reshape(b * c, 1, 1, size), groups=b * c)  # horizontal: (1, B·C, H, W)
    return flat.reshape(b, c, height, width).clamp_(0, 1)


def random_blur_(x: Tensor, prob: float, sigma_range: tuple[float, float], min_side: int,
                 generator: torch.Generator) -> Tensor:
    """Blurs each image in place with probability ``prob``, σ ~ U[sigma_range]; off when min(H, W) < min_side."""
    check_probability("blur probability", prob)
    check_range("blur sigma", sigma_range, 0.0)
    if min(x.shape[-2:]) < min_side or prob == 0:
        return x
    n = x.shape[0]
    chosen = (torch.rand(n, generator=generator, device=x.device) < prob).nonzero().squeeze(1)
    sigma = torch.rand(n, generator=generator, device=x.device) * (sigma_range[1] - sigma_range[0])
    sigma = sigma + sigma_range[0]
    if chosen.numel() == 0:
        return x
    return x.index_copy_(0, chosen, gaussian_blur(x.index_select(0, chosen), sigma[chosen]))
