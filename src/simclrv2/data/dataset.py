"""The one in-memory dataset type every reader returns, and the description of a named dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from simclrv2.errors import SimCLRv2Error


# eq=False: tensors do not compare to a bool; repr=False: the default repr would print every pixel.
@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """A split held in memory as ONE uint8 tensor, so augmentation can index batches on any device."""

    images: torch.Tensor  # (N, C, H, W) uint8, H == W, contiguous
    labels: torch.Tensor | None  # (N,) int64; None for unlabeled data
    classes: tuple[str, ...]  # class names, label k is classes[k]; empty for unlabeled data
    ids: tuple[str, ...]  # one stable identifier per image; label-subset files list these
    name: str  # e.g. "fashion-mnist/train"

    def __post_init__(self) -> None:
        x = self.images
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[2] != x.shape[3] or not x.is_contiguous():
            raise SimCLRv2Error(f"{self.name}: images must be a contiguous uint8 (N, C, S, S) tensor, "
                                f"got {x.dtype} {tuple(x.shape)}")
        n = x.shape[0]
        if self.labels is not None and (self.labels.dtype != torch.int64 or self.labels.shape != (n,)):
            raise SimCLRv2Error(f"{self.name}: labels must be an int64 ({n},) tensor, "
                                f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.ids) != n:
            raise SimCLRv2Error(f"{self.name}: {len(self.ids)} ids for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.labels is not None else "unlabeled"
        return f"ImageDataset({self.name!r}, {len(self)} images, {self.channels}x{self.image_size}px, {kind})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """The images at ``indices`` (positions, or a boolean mask), in that order; ids travel with them."""
        index = torch.as_tensor(indices)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise SimCLRv2Error(f"a mask over {self.name} needs {len(self)} entries, "
                                    f"got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        index = index.to(torch.int64).flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            bad = int(index.min()) if int(index.min()) < 0 else int(index.max())
            raise SimCLRv2Error(f"index {bad} is out of range for {self.name} ({len(self)} images)")
        labels = None if self.labels is None else self.labels[index]
        return ImageDataset(images=self.images[index].contiguous(), labels=labels, classes=self.classes,
                            ids=tuple(self.ids[i] for i in index.tolist()), name=self.name)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images, ``batch_size`` at a time: how evaluation reads them, in memory or streamed."""
        return (self.images[start:start + batch_size] for start in range(0, len(self), batch_size))

    def require_labels(self, purpose: str) -> torch.Tensor:
        """The labels, or an error naming what needed them (unlabeled splits such as STL-10's have none)."""
        if self.labels is None:
            raise SimCLRv2Error(f"{purpose} needs labelled images, but {self.name} is unlabeled; "
                                "use a labelled split such as 'train'")
        return self.labels

    def require_classes(self, stage: str) -> torch.Tensor:
        return require_classes(self, stage)


def require_classes(dataset, stage: str) -> torch.Tensor:
    """The labels of ``dataset`` (in memory or streamed), checked to hold at least two classes: a classifier
    trained on one class scores top-1 1.0 on a test split of that class and has learnt nothing."""
    labels = dataset.require_labels(stage)
    present = labels.unique().tolist()
    if len(present) < 2:
        only = f"only class {dataset.classes[present[0]]!r}" if present else "no class"
        raise SimCLRv2Error(f"{stage} trains a classifier, which needs images of at least two classes, but "
                            f"{dataset.name} has {only}; add a sub-folder of images for each other class")
    return labels


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name stands for: its splits, the files each split reads, where to get them."""

    title: str  # for messages: "Fashion-MNIST"
    splits: tuple[str, ...]
    # split -> the file names it reads; "x[.gz]" accepts x or x.gz. Empty for image folders.
    files: Mapping[str, tuple[str, ...]]
    read: Callable[..., ImageDataset]  # (folder holding the files, split) -> ImageDataset
    subdirs: tuple[str, ...] = ()  # where the official archive puts the files, inside the folder given
    apt_package: str = ""  # Debian package that installs the files, if any
    debian_dir: str = ""  # its folder under /usr/share/datasets

    @property
    def marker_files(self) -> tuple[str, ...]:
        """The files whose presence says "the dataset is here": those of its first split."""
        return self.files[self.splits[0]]

    @property
    def all_files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for split in self.splits for f in self.files[split]))


def index_ids(n: int, prefix: str = "") -> tuple[str, ...]:
    """Zero-padded positions ("00042"), at least 5 digits, so ids sort like the images."""
    width = max(5, len(str(max(n - 1, 0))))
    return tuple(f"{prefix}{i:0{width}d}" for i in range(n))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square uint8 images resized to ``size`` (antialiased bilinear), in chunks to bound float memory."""
    if images.shape[-1] == size:
        return images
    chunks = []
    for start in range(0, images.shape[0], 4096):
        x = images[start : start + 4096].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        chunks.append(y.round_().clamp_(0, 255).to(torch.uint8))
    if not chunks:
        return images.new_empty((0, images.shape[1], size, size))
    return torch.cat(chunks).contiguous()


# ITU-R 601-2 luma, the weights PIL uses for convert("L"), so grey arrays match grey folder images.
_LUMA = (0.299, 0.587, 0.114)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, S, S) images turned into 1 (luma) or 3 (repeated grey) channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA).view(1, 3, 1, 1)
        out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
        for start in range(0, images.shape[0], 4096):
            x = images[start : start + 4096].float()
            out[start : start + 4096] = (x * weights).sum(1, keepdim=True).round_().clamp_(0, 255)
        return out
    raise SimCLRv2Error(f"cannot turn {have}-channel images into {channels} channels; use channels 1 or 3")


def require_file(directory: Path, name: str, purpose: str) -> Path:
    """The file ``name`` in ``directory`` ("x[.gz]": x.gz or x), or an error naming it."""
    for candidate in file_candidates(name):
        path = directory / candidate
        if path.is_file():
            return path
    raise SimCLRv2Error(f"{directory} has no {name} (needed for {purpose}); put the file there or point "
                        "data_dir at the folder holding it")


def file_candidates(name: str) -> tuple[str, ...]:
    """The names a file may have on disk: "x[.gz]" stands for x.gz or x."""
    if name.endswith("[.gz]"):
        base = name[: -len("[.gz]")]
        return (base + ".gz", base)
    return (name,)
