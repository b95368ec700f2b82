"""The SimCLR pretraining augmentation (docs/recipe.md#augmentation) for whole batches, on the batch's own device.

crop → flip → colour jitter (p) → grayscale (p) → Gaussian blur (p, only for images of at least
``blur_min_side`` px). Every parameter is drawn per image from the generator passed in, so a seed fixes the
views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simclrv2.augment._inputs import (
    as_float_images,
    check_generator,
    check_images,
    check_probability,
    check_range,
)
from simclrv2.augment.blur import random_blur_
from simclrv2.augment.color import apply_jitter_, random_grayscale_, sample_jitter
from simclrv2.augment.geometry import draw_crop_randoms, random_crop_flip
from simclrv2.errors import SimCLRv2Error


@dataclass(frozen=True)
class AugmentConfig:
    """docs/recipe.md#augmentation, small-image (<= 32 px) values; for ImageNet set ``jitter_strength=1.0``."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 0.5  # s
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_min_side: int = 33  # docs/recipe.md#blur: no blur for images <= 32 px

    def __post_init__(self) -> None:
        check_range("augment.crop_scale", self.crop_scale, 0.0, 1.0)
        check_range("augment.crop_ratio", self.crop_ratio, 0.0)
        check_range("augment.blur_sigma", self.blur_sigma, 0.0)
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            check_probability(f"augment.{name}", getattr(self, name))
        if self.jitter_strength < 0:
            raise SimCLRv2Error(f"augment.jitter_strength = {self.jitter_strength!r} must be >= 0 "
                                "(0.5 for small images, 1.0 for ImageNet)")
        if self.blur_min_side < 1:
            raise SimCLRv2Error(f"augment.blur_min_side = {self.blur_min_side!r} must be >= 1 "
                                "(33 turns blur off for images <= 32 px)")


def _augment_float(x: Tensor, config: AugmentConfig, generator: torch.Generator,
                   out_size: int | tuple[int, int] | None) -> Tensor:
    x = random_crop_flip(x, generator, config.crop_scale, config.crop_ratio, config.flip_prob, out_size)
    return _colour_blur(x, config, generator)


def _colour_blur(x: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    x = apply_jitter_(x, *sample_jitter(x.shape[0], config.jitter_strength, config.jitter_prob, generator))
    x = random_grayscale_(x, config.grayscale_prob, generator)
    return random_blur_(x, config.blur_prob, config.blur_sigma, config.blur_min_side, generator)


def simclr_views(images: Tensor, config: AugmentConfig, generator: torch.Generator,
                 channels_last: bool = False, *,
                 out_size: int | tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Two independent views of each image, ``(view1, view2)``, each (B, C, H', W') float32 in [0, 1].

    Both views are made in one pass over the doubled batch (half the kernel launches of two calls); they are
    two halves of one (2B, …) tensor, each contiguous in the requested memory format.
    """
    check_images(images)
    x = as_float_images(torch.cat([images, images]))  # doubled before the conversion: uint8 copies are cheaper
    check_generator(generator, x.device)
    out = _augment_float(x, config, generator, out_size)  # (2B, C, H', W')
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out[: images.shape[0]], out[images.shape[0]:]


def simclr_views_from_crops(crops: Tensor, config: AugmentConfig, generator: torch.Generator,
                            channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`simclr_views` for views already cropped at decode time: ``crops`` is (2B, C, S, S), the first
    views then the second, each cut with the boxes of ``draw_crop_randoms(2B, generator)`` drawn from this
    step's generator state. Those draws are made again here (and dropped) so flip, jitter, grey and blur draw
    exactly what :func:`simclr_views` would draw after its crops."""
    check_images(crops)
    x = as_float_images(crops)
    check_generator(generator, x.device)
    n = x.shape[0]
    if n % 2:
        raise SimCLRv2Error(f"crops must hold two views per image (an even batch), got {n}")
    draw_crop_randoms(n, generator, x.device)  # the crop draws, already used by the loader
    flip = torch.rand(n, generator=generator, device=x.device) < config.flip_prob
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    out = _colour_blur(x, config, generator)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out[: n // 2], out[n // 2:]
