"""Batched on-device SimCLR augmentation (docs/recipe.md#augmentation): every parameter drawn per image from a passed-in
``torch.Generator``, applied to the whole batch tensor on its own device, no per-image Python loops.

Inputs are (B, C, H, W) uint8 or float in [0, 1] with C = 1 (grey) or 3; outputs are float32 in [0, 1]
(no normalisation). ``simclr_views`` is pretraining, ``crop_flip`` fine-tuning and distillation,
``eval_view`` evaluation; the rest are the tested building blocks they are made of.
"""

from __future__ import annotations

from simclrv2.augment.blur import blur_kernel_size, gaussian_blur, gaussian_kernels
from simclrv2.augment.color import (
    JITTER_OPS,
    adjust_hue,
    jitter_ranges,
    sample_jitter,
    to_grayscale,
)
from simclrv2.augment.geometry import (
    center_crop,
    crop_boxes_from_randoms,
    crop_flip,
    draw_crop_randoms,
    eval_crop_fraction,
    eval_view,
    flip_crops,
    resized_crop,
    sample_crop_boxes,
)
from simclrv2.augment.pad_crop import pad_crop_flip
from simclrv2.augment.pipeline import AugmentConfig, simclr_views, simclr_views_from_crops

__all__ = [
    "JITTER_OPS",
    "AugmentConfig",
    "adjust_hue",
    "blur_kernel_size",
    "center_crop",
    "crop_boxes_from_randoms",
    "crop_flip",
    "draw_crop_randoms",
    "eval_crop_fraction",
    "eval_view",
    "flip_crops",
    "gaussian_blur",
    "gaussian_kernels",
    "jitter_ranges",
    "pad_crop_flip",
    "resized_crop",
    "sample_crop_boxes",
    "sample_jitter",
    "simclr_views",
    "simclr_views_from_crops",
    "to_grayscale",
]
