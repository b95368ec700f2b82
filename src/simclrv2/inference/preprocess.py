"""What a trained network expects as input, and turning user images into it.

docs/recipe.md#evaluation-view: the image as a square of the training size (shorter side resized, centre-cropped,
as the image-folder reader stores training images), then a centre crop of 87.5 % resized back when the side is
above 32 px; values in [0, 1] with no mean/std normalisation; 1 (grey) or 3 (RGB) channels like the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simclrv2.augment import eval_crop_fraction, eval_view
from simclrv2.errors import SimCLRv2Error

_LUMA = torch.tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)  # PIL's convert("L") weights
_MODES = {1: "L", 3: "RGB"}

ImageInput = Any  # a PIL image, an array, a tensor, or a sequence of them


@dataclass(frozen=True)
class Preprocessing:
    """Input size and channels of a network; calling it turns images into a float (N, C, S, S) batch."""

    image_size: int
    channels: int

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.channels not in _MODES:
            raise SimCLRv2Error(f"preprocessing needs image_size >= 1 and 1 or 3 channels, got "
                                f"{self.image_size} px and {self.channels} channels")

    def to_dict(self) -> dict[str, Any]:
        """The description written beside every export, so code in other languages can feed the network."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "layout": "NCHW float32",
            "value_range": [0.0, 1.0],
            "mean": None,  # docs/recipe.md#augmentation: no normalisation
            "std": None,
            "square": "resize the shorter side to image_size, centre-crop the square",
            "center_crop": eval_crop_fraction(self.image_size),  # then crop this fraction of the centre and resize back
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        try:
            return cls(int(values["image_size"]), int(values["channels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SimCLRv2Error(f"the preprocessing entry {values!r} lacks image_size or channels") from exc

    def __call__(self, images: ImageInput) -> torch.Tensor:
        """PIL images, arrays (HW, HWC or NHWC; uint8, or float in [0, 1]) or tensors (CHW or NCHW; uint8, or
        float in [0, 1]), one or a sequence -> the network's (N, C, S, S) float32 input."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise SimCLRv2Error("no images given: pass at least one image")
            return torch.cat([self(image) for image in images])
        if isinstance(images, Image.Image):
            return self.from_uint8(torch.from_numpy(pil_square(images, self.image_size, self.channels)))
        if isinstance(images, np.ndarray):
            images = _array_to_nchw(images)
        if not isinstance(images, torch.Tensor):
            raise SimCLRv2Error(f"cannot read images of type {type(images).__name__}: pass PIL images, numpy "
                                "arrays (HWC uint8) or tensors (NCHW, uint8 or float in [0, 1])")
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise SimCLRv2Error(f"image tensors must be (C, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
        return self.from_uint8(images) if images.dtype == torch.uint8 else self._finish(_as_float(images))

    def from_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> the network's float input."""
        return self._finish(images.float().div_(255))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = _square(_convert_channels(x, self.channels), self.image_size)
        return eval_view(x, self.image_size).contiguous()


def pil_square(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """(1, C, S, S) uint8: the image converted to grey/RGB, its centred square resized to ``size`` in one
    bicubic step, exactly as the image-folder reader stores training images."""
    img = image.convert(_MODES[channels])
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    array = np.asarray(img)
    return (array[None] if channels == 1 else array.transpose(2, 0, 1))[None].copy()


def _array_to_nchw(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:  # (H, W) grey
        array = array[:, :, None]
    if array.ndim not in (3, 4) or array.shape[-1] not in (1, 3, 4):
        raise SimCLRv2Error(f"arrays must be (H, W), (H, W, C) or (N, H, W, C) with C = 1, 3 or 4, got shape "
                            f"{array.shape}")
    if array.dtype not in (np.uint8, np.float32, np.float64):
        raise SimCLRv2Error(f"arrays must be uint8 or float in [0, 1], got {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor.unsqueeze(0) if tensor.dim() == 3 else tensor
    return tensor.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise SimCLRv2Error(f"image tensors must be uint8 or float in [0, 1], got {x.dtype}")
    x = x.float()
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise SimCLRv2Error("float images must lie in [0, 1]; divide 0-255 values by 255 or pass uint8")
    return x


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    have = x.shape[1]
    if have == 4:  # RGBA: the alpha channel carries no colour
        x, have = x[:, :3], 3
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        return (x * _LUMA.to(x.device)).sum(1, keepdim=True)
    raise SimCLRv2Error(f"cannot turn {have}-channel images into {channels} channels; pass grey, RGB or RGBA images")


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centred square of each image, resized to ``size`` (antialiased bilinear)."""
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = x[..., top:top + side, left:left + side]
    if side == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
