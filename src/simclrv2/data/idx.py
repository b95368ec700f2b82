"""IDX files (MNIST, Fashion-MNIST): a big-endian header, then raw unsigned bytes; gzipped or not."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from simclrv2.data.dataset import ImageDataset, index_ids, require_file
from simclrv2.errors import SimCLRv2Error

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))

# File prefix of each split in the official release.
_PREFIX = {"train": "train", "test": "t10k"}
FILES = {split: (f"{p}-images-idx3-ubyte[.gz]", f"{p}-labels-idx1-ubyte[.gz]")
         for split, p in _PREFIX.items()}

_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one these datasets use


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file, shaped as its header says (read-only view of the bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SimCLRv2Error(f"cannot read {path} ({err.strerror or err}); check that the file is readable") from err
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise SimCLRv2Error(f"{path} is a damaged gzip file ({err}); download it again") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise SimCLRv2Error(f"{path} is not an IDX file of unsigned bytes (magic "
                            f"{raw[:4].hex() or 'missing'}); expected the MNIST-format files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SimCLRv2Error(f"{path} is truncated inside its header; download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise SimCLRv2Error(f"{path} holds {len(raw) - header} data bytes but its header promises "
                            f"{'x'.join(map(str, dims))} = {math.prod(dims)}; the file is truncated or "
                            "corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_split(directory: Path, split: str, name: str, classes: tuple[str, ...]) -> ImageDataset:
    """One split of an MNIST-format dataset as (N, 1, S, S) uint8 images and int64 labels."""
    image_file, label_file = (require_file(directory, f, f"the {name} {split} split") for f in FILES[split])
    images = read_idx(image_file)  # (N, rows, cols)
    labels = read_idx(label_file)  # (N,)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise SimCLRv2Error(f"{image_file} should hold square images (N, rows, cols), "
                            f"got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SimCLRv2Error(f"{label_file} holds {labels.shape} labels for {images.shape[0]} images in "
                            f"{image_file.name}; the two files do not belong together")
    if labels.size and int(labels.max()) >= len(classes):
        raise SimCLRv2Error(f"{label_file} has label {int(labels.max())}, but {name} has "
                            f"{len(classes)} classes")
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),  # copy: the bytes buffer is read-only
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=classes,
        ids=index_ids(images.shape[0]),
        name=f"{name}/{split}",
    )
