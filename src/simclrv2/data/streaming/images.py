"""Streamed images: a selection of a streamed collection (a label subset, a kNN bank, the validation split) that
stands where an in-memory :class:`~simclrv2.data.ImageDataset` would, without its pixels.

Evaluation reads it batch by batch, decoded as the in-memory folder reader decodes (shorter side resized to the
training size, centre square, :func:`~simclrv2.data.folder.square_pixels`) in DataLoader workers, so a
collection larger than memory is scored without holding its images; the evaluation centre crop follows on the
device as in memory. Training reads it through :meth:`StreamedImages.selection` and the step sampler.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from simclrv2.data.dataset import require_classes
from simclrv2.data.folder import DECODE_ERRORS, square_pixels
from simclrv2.data.streaming.decode import ImageSource
from simclrv2.data.streaming.loader import one_thread, worker_error
from simclrv2.errors import SimCLRv2Error

_MODES = {1: "L", 3: "RGB"}


class SquareDataset(Dataset):
    """Map-style dataset of an :class:`ImageSource`: index -> (C, S, S) uint8, the image's centred square."""

    def __init__(self, source: ImageSource, size: int, channels: int) -> None:
        if channels not in _MODES:
            raise SimCLRv2Error(f"streamed images are read with 1 or 3 channels, not {channels}")
        self.source, self.size, self.mode = source, size, _MODES[channels]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            with self.source.open(index) as img:
                pixels = square_pixels(img, self.size, self.mode)  # (S, S) or (S, S, 3)
        except DECODE_ERRORS as err:
            raise SimCLRv2Error(f"cannot decode image {self.source.name(index)} ({err}); remove or replace it") from err
        return torch.from_numpy(np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)))


class WholeImages(Dataset):
    """A step sampler's items ``(index, uniforms)`` -> (1, C, S, S): the image's centred square as its one view
    (no uniforms), for a stage whose crop comes after decoding, on the device, as in memory (the pad-4 crop)."""

    def __init__(self, squares: SquareDataset) -> None:
        self.squares = squares

    def __len__(self) -> int:
        return len(self.squares)

    def __getitem__(self, item: tuple[int, torch.Tensor]) -> torch.Tensor:
        return self.squares[item[0]][None]


@dataclass(frozen=True, eq=False)
class Selection:
    """The images of ``source`` at ``indices``, itself an :class:`ImageSource`: what a step sampler's positions
    (0 … N−1, the engine's order) index when a stage trains on part of a collection."""

    source: ImageSource
    indices: np.ndarray  # (N,) int64 into ``source``

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.source.labels is None else self.source.labels[self.indices]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def open(self, i: int) -> Image.Image:
        return self.source.open(int(self.indices[i]))

    def name(self, i: int) -> str:
        return self.source.name(int(self.indices[i]))

    def id(self, i: int) -> str:
        return self.source.id(int(self.indices[i]))


@dataclass(frozen=True, eq=False)
class StreamedImages:
    """The images of ``source`` at ``indices``: what an :class:`~simclrv2.data.ImageDataset` offers evaluation
    (labels, classes, :meth:`batches`) without the pixels, which :meth:`batches` decodes on demand."""

    source: ImageSource
    indices: torch.Tensor  # (N,) int64 into ``source``
    image_size: int
    channels: int
    workers: int
    name: str

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> torch.Tensor | None:
        labels = self.source.labels
        return None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))[self.indices]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> tuple[str, ...]:
        """What label-subset files list (built on demand: a string per image)."""
        return tuple(self.source.id(i) for i in self.indices.tolist())

    def selection(self) -> Selection:
        return Selection(self.source, self.indices.numpy())

    def subset(self, indices: torch.Tensor) -> StreamedImages:
        """The images at ``indices`` (positions in this selection), in that order."""
        return StreamedImages(self.source, self.indices[indices], self.image_size, self.channels, self.workers,
                              self.name)

    def require_labels(self, purpose: str) -> torch.Tensor:
        labels = self.labels
        if labels is None:
            raise SimCLRv2Error(f"{purpose} needs labelled images, but {self.name} is unlabeled; "
                                "use a folder with one sub-folder per class")
        return labels

    def require_classes(self, stage: str) -> torch.Tensor:
        return require_classes(self, stage)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """(B, C, S, S) uint8 batches of the images in order, decoded by ``workers`` processes (0: this one)."""
        loader = DataLoader(SquareDataset(self.source, self.image_size, self.channels), batch_size=batch_size,
                            sampler=self.indices.tolist(), num_workers=self.workers,
                            worker_init_fn=one_thread if self.workers else None)
        batches = iter(loader)
        while True:
            try:
                yield next(batches)
            except StopIteration:
                return
            except SimCLRv2Error as err:
                raise worker_error(err) from None
