"""A folder of image files: one sub-folder per class, or only image files for unlabeled data.

Every image is decoded once (PIL, in a small thread pool: decoding releases the GIL), converted to RGB or
grey, its shorter side resized to ``image_size`` and centre-cropped to a square, and the whole folder is
returned as one uint8 tensor like every other dataset.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from simclrv2.data.dataset import ImageDataset
from simclrv2.errors import SimCLRv2Error

FOLDER_IMAGE_SIZE = 96  # the side of folder images when no image_size is given (STL-10's size)
_PROGRESS_FROM = 1000  # show a progress bar for folders with more files than this
_MODES = {1: "L", 3: "RGB"}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # skip .DS_Store, .ipynb_checkpoints and the like


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in entries if p.is_file() and p.suffix.lower() in extensions
                  and all(_visible(Path(part)) for part in p.relative_to(folder).parts))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def split_folder(root: Path, split: str) -> Path:
    """``root/train`` or ``root/test`` when present; otherwise the folder itself holds the training images."""
    if not root.is_dir():
        raise SimCLRv2Error(f"image folder {root} not found; set data.data_dir to a folder of images")
    if (root / split).is_dir():
        return root / split
    if split == "train":
        if (root / "test").is_dir():
            raise SimCLRv2Error(f"{root} has a test/ folder but no train/ folder; add {root / 'train'}")
        return root
    raise SimCLRv2Error(f"{root} has no {split}/ folder; put the {split} images in {root / split}")


def list_images(root: Path, split: str) -> tuple[Path, list[Path], list[int] | None, tuple[str, ...]]:
    """(split folder, image paths, labels or None, class names), in sorted order.

    The test split takes its class list from ``train/`` when there is one, so label k means the same
    class in both splits even when the test split lacks a class.
    """
    folder = split_folder(root, split)
    classes = _class_dirs(folder)
    loose = _image_files(folder, recursive=False)
    if not classes:
        if not loose:
            raise SimCLRv2Error(f"{folder} is empty: expected one sub-folder of images per class, "
                                "or image files")
        return folder, loose, None, ()
    if loose:
        raise SimCLRv2Error(f"{loose[0]} lies beside the class folders of {folder}; move it into its class "
                            "folder (a labelled folder holds only class sub-folders)")
    names = [d.name for d in classes]
    if folder.name == "test" and folder.parent == root and (root / "train").is_dir():
        names = [d.name for d in _class_dirs(root / "train")]
        extra = sorted({d.name for d in classes} - set(names))
        if extra:
            raise SimCLRv2Error(f"{folder / extra[0]} is a class that {root / 'train'} does not have; "
                                "train and test must use the same class folders")
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir in classes:
        files = _image_files(class_dir, recursive=True)
        if not files:
            raise SimCLRv2Error(f"class folder {class_dir} holds no images; add images or remove the folder")
        paths += files
        labels += [names.index(class_dir.name)] * len(files)
    return folder, paths, labels, tuple(names)


def decode_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image as (S, S) or (S, S, 3) uint8: shorter side resized to ``image_size``, centre-cropped."""
    try:
        with Image.open(path) as img:
            img.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale, still >= the size
            img = img.convert(mode)
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            # One resampling step from the centred square of the source: the crop and the resize at once.
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC,
                             box=(left, top, left + side, top + side))
            return np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SimCLRv2Error(f"cannot read image {path} ({err}); remove or replace the file") from err


def read_folder(root: Path, split: str = "train", image_size: int = FOLDER_IMAGE_SIZE,
                channels: int = 3) -> ImageDataset:
    """An image folder as (N, channels, image_size, image_size) uint8; ids are paths relative to the split."""
    if channels not in _MODES:
        raise SimCLRv2Error(f"image folders are read with 1 or 3 channels, not {channels}")
    if image_size < 1:
        raise SimCLRv2Error(f"image_size must be >= 1, got {image_size}")
    folder, paths, labels, classes = list_images(Path(root), split)
    images = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)
    out = images.numpy()  # shares memory with `images`
    mode = _MODES[channels]
    workers = min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        decoded = pool.map(lambda p: decode_image(p, image_size, mode), paths)
        bar = tqdm(decoded, total=len(paths), desc=f"decoding {folder.name}", unit="img",
                   disable=len(paths) <= _PROGRESS_FROM)
        for i, array in enumerate(bar):
            out[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)  # (S, S, C) -> (C, S, S)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a bad file, do not decode the rest
    return ImageDataset(
        images=images,
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
        classes=classes,
        ids=tuple(p.relative_to(folder).as_posix() for p in paths),
        name=f"folder/{split}",
    )
