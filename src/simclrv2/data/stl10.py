"""STL-10 binary release (``stl10_binary``): raw uint8 images, labels 1..10, and 100,000 unlabeled images.

Each image is stored channel by channel, and each channel column by column (the Matlab order), so a file
reshaped to (N, 3, 96, 96) holds every image transposed; the reader swaps the last two axes back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from simclrv2.data.dataset import ImageDataset, index_ids, require_file
from simclrv2.errors import SimCLRv2Error

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
# The image files of each split, in the order their images are concatenated.
_PARTS = {"train": ("train",), "test": ("test",), "unlabeled": ("unlabeled",),
          "train+unlabeled": ("train", "unlabeled")}
FILES = {
    split: tuple(f"{p}_X.bin" for p in parts) + ((f"{split}_y.bin",) if split in ("train", "test") else ())
    for split, parts in _PARTS.items()
}

_SIDE = 96
_IMAGE_BYTES = 3 * _SIDE * _SIDE
_CHUNK = 5000  # images copied at a time, so the progress bar moves on the 100,000 unlabeled images


def _open_images(path: Path) -> np.ndarray:
    """The images of one .bin file as a read-only memory map, (N, 3, W, H): still transposed."""
    size = path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise SimCLRv2Error(f"{path} has {size} bytes, not a whole number of 3x96x96 images; "
                            "download it again")
    try:
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(size // _IMAGE_BYTES, 3, _SIDE, _SIDE))
    except OSError as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: OSError) -> SimCLRv2Error:
    return SimCLRv2Error(f"cannot read {path} ({err.strerror or err}); check that the file is readable")


def _read_labels(path: Path, count: int) -> torch.Tensor:
    try:
        labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    except OSError as err:
        raise _unreadable(path, err) from err
    if labels.shape != (count,):
        raise SimCLRv2Error(f"{path} has {labels.shape[0]} labels for {count} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(STL10_CLASSES)):
        raise SimCLRv2Error(f"{path} has labels outside 1..{len(STL10_CLASSES)}")
    return torch.from_numpy(labels)


def _class_names(directory: Path) -> tuple[str, ...]:
    path = directory / "class_names.txt"
    if not path.is_file():
        return STL10_CLASSES
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SimCLRv2Error(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); write one class "
                            "name per line, or delete it to use the standard names") from err
    except OSError as err:
        raise _unreadable(path, err) from err
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != len(STL10_CLASSES):
        raise SimCLRv2Error(f"{path} lists {len(names)} class names, expected {len(STL10_CLASSES)}")
    return names


def read_stl10(directory: Path, split: str) -> ImageDataset:
    """One STL-10 split as (N, 3, 96, 96) uint8; "unlabeled" and "train+unlabeled" have labels None."""
    purpose = f"the stl10 {split} split"
    sources = [_open_images(require_file(directory, f"{part}_X.bin", purpose)) for part in _PARTS[split]]
    total = sum(s.shape[0] for s in sources)
    images = torch.empty((total, 3, _SIDE, _SIDE), dtype=torch.uint8)
    out = images.numpy()  # shares memory with `images`
    quiet = total <= 20_000 or not sys.stderr.isatty()
    with tqdm(total=total, desc=f"reading stl10/{split}", unit="img", disable=quiet) as bar:
        start = 0
        for source in sources:
            for i in range(0, source.shape[0], _CHUNK):
                chunk = source[i : i + _CHUNK]
                out[start : start + chunk.shape[0]] = chunk.transpose(0, 1, 3, 2)  # back upright
                start += chunk.shape[0]
                bar.update(chunk.shape[0])
    labelled = split in ("train", "test")
    labels = _read_labels(require_file(directory, f"{split}_y.bin", purpose), total) if labelled else None
    return ImageDataset(images=images, labels=labels, classes=_class_names(directory) if labelled else (),
                        ids=index_ids(total), name=f"stl10/{split}")
