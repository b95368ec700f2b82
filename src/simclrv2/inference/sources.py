"""The images ``predict`` and ``embed`` read: a folder of image files (any nesting, no labels needed) or a
split of a dataset (``DATASET:SPLIT``), delivered in batches at the network's size and channels."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simclrv2.data import DATASETS, ImageDataset, load_dataset
from simclrv2.data.folder import nothing_readable, skipped_images, try_decode
from simclrv2.errors import SimCLRv2Error
from simclrv2.inference.preprocess import Preprocessing
from simclrv2.logs import get_logger

_MODES = {1: "L", 3: "RGB"}
_WORKERS = 4


@dataclass(frozen=True)
class ImageSource:
    """Image ids (file paths relative to the folder, or a split's ids) and a way to read them in batches."""

    name: str
    ids: tuple[str, ...]
    files: tuple[Path, ...] = ()  # a folder: decoded a batch at a time, so any folder size fits in memory
    dataset: ImageDataset | None = None  # a split: already in memory
    folder: Path | None = None  # what the file ids are relative to

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int, preprocessing: Preprocessing) -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
        """(ids, (B, C, S, S) uint8 images) in order. Files that cannot be decoded are skipped as in training
        (one warning at the end counts and names them); none readable is an error."""
        size, mode = preprocessing.image_size, _MODES[preprocessing.channels]
        failed: dict[Path, str] = {}
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:  # PIL decoding releases the GIL
            for start in range(0, len(self), batch_size):
                stop = min(start + batch_size, len(self))
                if self.dataset is not None:
                    yield self.ids[start:stop], self.dataset.images[start:stop]
                    continue
                arrays = list(pool.map(lambda p: try_decode(p, size, mode), self.files[start:stop]))
                kept = [i for i, a in enumerate(arrays) if not isinstance(a, str)]
                failed.update({self.files[start + i]: a for i, a in enumerate(arrays) if isinstance(a, str)})
                if kept:
                    stacked = np.stack([arrays[i] for i in kept])
                    images = torch.from_numpy(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))
                    yield tuple(self.ids[start + i] for i in kept), images
        if failed:
            folder = self.folder or self.files[0].parent
            if len(failed) == len(self):
                raise nothing_readable(len(self), folder, failed, hint="pass another folder")
            get_logger().warning(f"warning: {self.name}: read {len(self) - len(failed)} images; "
                                 f"{skipped_images(failed, folder)}")


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (sub-folders included, hidden entries skipped), sorted."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _split(target: str) -> tuple[str, str] | None:
    name, sep, split = target.partition(":")
    return (name, split) if sep and name in DATASETS and name != "folder" else None


def open_images(target: str, preprocessing: Preprocessing, data_dir: str | None = None) -> ImageSource:
    """``target``: a folder of images, one image file, or ``DATASET:SPLIT`` (e.g. ``fashion-mnist:test``)."""
    path = Path(target).expanduser()
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise SimCLRv2Error(f"{path} holds no image files; pass a folder of images or DATASET:SPLIT")
        return ImageSource(str(path), tuple(f.relative_to(path).as_posix() for f in files), files=tuple(files),
                           folder=path)
    if path.is_file():
        return ImageSource(str(path), (path.name,), files=(path,), folder=path.parent)
    split = _split(target)
    if split is None:
        raise SimCLRv2Error(f"{target} is neither a folder nor an image file nor DATASET:SPLIT (datasets: "
                            f"{', '.join(d for d in DATASETS if d != 'folder')}; e.g. fashion-mnist:test)")
    dataset = _load(split[0], split[1], preprocessing, data_dir)
    return ImageSource(dataset.name, dataset.ids, dataset=dataset)


def open_labelled(target: str, preprocessing: Preprocessing, data_dir: str | None = None) -> ImageDataset:
    """Labelled images for kNN: a folder with one sub-folder per class, or ``DATASET:SPLIT``."""
    path = Path(target).expanduser()
    if path.is_dir():
        dataset = _load("folder", "train", preprocessing, str(path))
    elif _split(target) is not None:
        dataset = _load(*_split(target), preprocessing, data_dir)
    else:
        raise SimCLRv2Error(f"{target} is neither a folder of class sub-folders nor DATASET:SPLIT")
    dataset.require_labels(f"kNN labelling (--knn {target})")
    return dataset


def _load(name: str, split: str, preprocessing: Preprocessing, data_dir: str | None) -> ImageDataset:
    return load_dataset(name, split, data_dir=data_dir, image_size=preprocessing.image_size,
                        channels=preprocessing.channels)
