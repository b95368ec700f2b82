"""Pad-and-crop + flip: the classic small-image augmentation for training a classifier from labels.

A random resized crop at area 0.08 throws away most of a 28-px image; shifting the image by up to ``padding``
pixels (zero fill) keeps every object whole, which is what a network trained on a few hundred labels needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simclrv2.augment._inputs import as_float_images, check_generator, check_probability
from simclrv2.errors import SimCLRv2Error


def pad_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4, flip_prob: float = 0.5,
                  channels_last: bool = False) -> Tensor:
    """Zero-pad by ``padding`` on every side, crop back to the input size at a per-image offset drawn uniformly
    in [0, 2·padding]², then flip horizontally with probability ``flip_prob``; float32 in [0, 1] out."""
    if padding < 0:
        raise SimCLRv2Error(f"padding must be >= 0, got {padding}")
    check_probability("flip probability", flip_prob)
    x = as_float_images(images)
    check_generator(generator, x.device)
    n, _, height, width = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=x.device)  # (N, 2): y, x
    flip = torch.rand(n, generator=generator, device=x.device) < flip_prob
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (N, C, H + 2p, W + 2p)
    cols = torch.arange(width, device=x.device).expand(n, width)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + offsets[:, 1:]  # (N, W): a flip reads columns backwards
    rows = torch.arange(height, device=x.device) + offsets[:, :1]  # (N, H)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    out = out.permute(0, 3, 1, 2)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()
