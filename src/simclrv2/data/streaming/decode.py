"""Decoding with the random resized crop done at decode time: read the header, size the crop boxes from the
step's uniforms, decode (JPEG: at the smallest DCT scale that keeps the crops at least the output size), cut
each box out of the source pixels and resize it once to the output size.

The boxes come from :func:`simclrv2.augment.crop_boxes_from_randoms`, the function the in-memory path uses,
applied to the uniforms the main process drew with the step's generator: for the same seed both paths cut the
same boxes. They are drawn on the whole source image (the in-memory folder reader first centre-crops to a
square), so for non-square sources the streaming path follows the reference's crop of the full image.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from simclrv2.augment import crop_boxes_from_randoms
from simclrv2.errors import SimCLRv2Error

_MODES = {1: "L", 3: "RGB"}


class ImageSource(Protocol):
    """Anything that opens its i-th image lazily (header read, pixels not yet decoded)."""

    labels: np.ndarray | None
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def open(self, i: int) -> Image.Image: ...

    def name(self, i: int) -> str: ...  # for messages: the file, or the shard and key

    def id(self, i: int) -> str: ...  # what label-subset files list: the path in the split, or the shard key


def decode_crops(img: Image.Image, randoms: torch.Tensor, size: int, channels: int,
                 scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
    """(k, C, size, size) uint8: the k crops whose uniforms are the rows of ``randoms`` (k, 202)."""
    width, height = img.size
    boxes = crop_boxes_from_randoms(randoms, height, width, scale, ratio).tolist()  # (top, left, h, w)
    smallest_w = min(b[3] for b in boxes)
    smallest_h = min(b[2] for b in boxes)
    mode = _MODES[channels]
    # JPEG draft: decode at 1/2, 1/4 or 1/8 scale when the smallest crop still covers `size` pixels there.
    img.draft(mode, (math.ceil(width * size / smallest_w), math.ceil(height * size / smallest_h)))
    if img.mode != mode:
        img = img.convert(mode)
    fx, fy = img.size[0] / width, img.size[1] / height
    out = np.empty((len(boxes), channels, size, size), dtype=np.uint8)
    for k, (top, left, h, w) in enumerate(boxes):
        crop = img.resize((size, size), Image.Resampling.BILINEAR,
                          box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))
        pixels = np.asarray(crop)
        out[k] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


class CropDataset(Dataset):
    """Map-style dataset of an :class:`ImageSource`: item ``(index, randoms)`` -> (k, C, S, S) uint8 crops.

    ``randoms`` are the rows of ``draw_crop_randoms`` that belong to this image (its two views), so a worker
    needs no generator and every crop is fixed by the step's seed.
    """

    def __init__(self, source: ImageSource, size: int, channels: int, scale: tuple[float, float],
                 ratio: tuple[float, float]) -> None:
        if channels not in _MODES:
            raise SimCLRv2Error(f"streamed images are read with 1 or 3 channels, not {channels}")
        self.source, self.size, self.channels, self.scale, self.ratio = source, size, channels, scale, ratio

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, torch.Tensor]) -> torch.Tensor:
        index, randoms = item
        try:
            with self.source.open(index) as img:
                crops = decode_crops(img, randoms, self.size, self.channels, self.scale, self.ratio)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise SimCLRv2Error(f"cannot decode image {self.source.name(index)} ({err}); remove or replace it") from err
        return torch.from_numpy(crops)
