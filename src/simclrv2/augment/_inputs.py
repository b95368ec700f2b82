"""Checks and conversions shared by every augmentation entry point: batches in, float32 [0, 1] out."""

from __future__ import annotations

import torch
from torch import Tensor

from simclrv2.errors import SimCLRv2Error


def check_images(images: Tensor) -> None:
    """Accepts (B, C, H, W) uint8 or floating tensors with C = 1 (grey) or 3 (RGB)."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise SimCLRv2Error(f"images must be a (B, C, H, W) tensor, got {shape}; add a batch dimension")
    if images.shape[1] not in (1, 3):
        raise SimCLRv2Error(f"images must have 1 or 3 channels in dim 1, got shape {tuple(images.shape)}; "
                            "pass (B, C, H, W), not (B, H, W, C)")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise SimCLRv2Error(f"images must be uint8 or float in [0, 1], got {images.dtype}")


def as_float_images(images: Tensor) -> Tensor:
    """(B, C, H, W) uint8 or float in [0, 1] -> float32 in [0, 1] (float32 input is returned as is)."""
    check_images(images)
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255)  # the same rounding as `images.float() / 255`
    return images.to(torch.float32)


def check_generator(generator: torch.Generator, device: torch.device) -> None:
    """Random draws are made on the images' device; a generator elsewhere would fail deep inside torch."""
    if not isinstance(generator, torch.Generator):
        raise SimCLRv2Error("pass a torch.Generator (e.g. torch.Generator().manual_seed(0)) for random draws")
    index, wanted = generator.device.index, device.index
    if generator.device.type != device.type or (index is not None and wanted is not None and index != wanted):
        raise SimCLRv2Error(f"the generator is on {generator.device} but the images are on {device}; "
                            f"create it with torch.Generator(device={str(device)!r})")


def pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An int side or an (h, w) pair -> (h, w), both positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise SimCLRv2Error(f"{name} must be positive, got {size!r}")
    return int(h), int(w)


def check_range(name: str, bounds: tuple[float, float], low: float, high: float | None = None) -> None:
    """(min, max) with low < min <= max (<= high): the one shape of every range option."""
    if len(bounds) != 2:
        raise SimCLRv2Error(f"{name} must be a (min, max) pair, got {bounds!r}")
    lo, hi = bounds
    if not (low < lo <= hi and (high is None or hi <= high)):
        upper = f" <= {high}" if high is not None else ""
        raise SimCLRv2Error(f"{name} = {bounds!r} must satisfy {low} < min <= max{upper}")


def check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise SimCLRv2Error(f"{name} = {p!r} must be a probability in [0, 1]")
