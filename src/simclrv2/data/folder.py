"""A folder of image files: one sub-folder per class, or only image files for unlabeled data.

Every image is decoded once (PIL, in a small thread pool: decoding releases the GIL), converted to RGB or
grey, its shorter side resized to ``image_size`` and centre-cropped to a square, and the whole folder is
returned as one uint8 tensor like every other dataset.

Unless told, the size and channels come from the training images (``choose_format``), so 28 px grey digits
stay 28 px grey instead of being upscaled to 96 px RGB. Files that are not images or cannot be decoded are
skipped, and one log line says what was skipped, converted and resized.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from simclrv2.data.dataset import ImageDataset
from simclrv2.errors import SimCLRv2Error, UnknownClassError

log = logging.getLogger(__name__)

MAX_AUTO_SIZE = 96  # the largest side chosen from the data (STL-10's): the folder is held in memory
_PROGRESS_FROM = 1000  # show a progress bar for folders with more files than this
_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # PNG/TIFF 16-bit grey (older Pillow opens it as "I")
_GREY = {"1", "L", "LA", "La", "F", *_SIXTEEN_BIT}
# What Pillow raises on a damaged or foreign file, besides OSError (UnidentifiedImageError, truncated data).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
_NAMES_SHOWN = 3  # file names quoted in a log line or error

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class FolderListing:
    """The files of one split, in sorted order; ``others``: visible files skipped as not images."""

    folder: Path
    paths: list[Path]
    labels: list[int] | None
    classes: tuple[str, ...]
    others: list[Path]


@dataclass(frozen=True)
class Probe:
    """What an image's header says: enough to choose a size and channels without decoding it."""

    width: int
    height: int
    mode: str

    @property
    def side(self) -> int:
        return min(self.width, self.height)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # skip .DS_Store, .ipynb_checkpoints and the like


def _files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(image files, other visible files) by extension, sorted."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    entries = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in entries if p.is_file()
                   and all(_visible(Path(part)) for part in p.relative_to(folder).parts))
    images = [p for p in files if p.suffix.lower() in extensions]
    return images, [p for p in files if p.suffix.lower() not in extensions]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def class_folder_names(folder: Path) -> list[str]:
    """The names of ``folder``'s visible sub-folders (its classes, when it is labelled), nothing else read."""
    return [d.name for d in _class_dirs(folder)]


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


def list_images(root: Path, split: str) -> FolderListing:
    """The image files of a split with their labels (None for a folder of loose images) and class names.

    The test split takes its class list from ``train/`` when there is one, so label k means the same
    class in both splits even when the test split lacks a class.
    """
    folder = split_folder(root, split)
    classes = _class_dirs(folder)
    loose, others = _files(folder, recursive=False)
    if not classes:
        if not loose:
            raise SimCLRv2Error(f"{folder} is empty: expected one sub-folder of images per class, "
                                "or image files")
        return FolderListing(folder, loose, None, (), others)
    if loose:
        raise SimCLRv2Error(f"{loose[0]} lies beside the class folders of {folder}; move it into its class "
                            "folder (a labelled folder holds only class sub-folders)")
    names = [d.name for d in classes]
    if folder.name == "test" and folder.parent == root and (root / "train").is_dir():
        names = [d.name for d in _class_dirs(root / "train")]
        extra = sorted({d.name for d in classes} - set(names))
        if extra:
            raise UnknownClassError.of_folder(folder / extra[0], root / "train")
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir in classes:
        files, other = _files(class_dir, recursive=True)
        if not files:
            raise SimCLRv2Error(f"class folder {class_dir} holds no images; add images or remove the folder")
        paths += files
        labels += [names.index(class_dir.name)] * len(files)
        others += other
    return FolderListing(folder, paths, labels, tuple(names), others)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grey as 8-bit by its high byte (value >> 8): each output level covers 256 input values.

    Pillow's own convert("L") clips 16-bit values at 255, which turns almost every pixel white."""
    if img.mode not in _SIXTEEN_BIT:
        return img
    values = np.asarray(img).astype(np.int64)  # I;16B is big-endian, "I" is int32: one dtype for both
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))


def square_pixels(img: Image.Image, image_size: int, mode: str) -> np.ndarray:
    """An opened image as (S, S) or (S, S, 3) uint8: shorter side resized to ``image_size``, centre-cropped.
    The streamed evaluation images are decoded by this too, so both paths see the same pixels. Raises what
    Pillow raises on a damaged file (see ``DECODE_ERRORS``)."""
    img.draft(mode, (image_size, image_size))  # JPEG: decode at a reduced scale, still >= the size
    img = _eight_bit(img).convert(mode)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    # One resampling step from the centred square of the source: the crop and the resize at once.
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(img)


def decode_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image file as :func:`square_pixels` decodes it."""
    try:
        with Image.open(path) as img:
            return square_pixels(img, image_size, mode)
    except DECODE_ERRORS as err:
        raise SimCLRv2Error(f"cannot read image {path} ({err}); remove or replace the file") from err


def try_decode(path: Path, image_size: int, mode: str) -> np.ndarray | str:
    """:func:`decode_image`, or why the file cannot be decoded. The one rule for training, ``predict`` and
    ``embed``: unreadable images are skipped and counted (:func:`skipped_images`); none readable is an error
    (:func:`nothing_readable`)."""
    try:
        return decode_image(path, image_size, mode)
    except SimCLRv2Error as err:
        return str(err.__cause__ or err)


def skipped_images(failed: dict[Path, str], folder: Path) -> str:
    """"skipped N unreadable images (the first few, relative to ``folder``; first error: ...)"."""
    first = next(iter(failed.values()))
    return (f"skipped {len(failed)} unreadable image{'s' * (len(failed) > 1)} "
            f"({_names(failed, folder)}; first error: {first})")


def nothing_readable(count: int, folder: Path, failed: dict[Path, str],
                     hint: str = "point data.data_dir at another folder") -> SimCLRv2Error:
    return SimCLRv2Error(f"none of the {count} image files in {folder} can be read (e.g. {_names(failed, folder)}: "
                         f"{next(iter(failed.values()))}); check they are images, or {hint}")


def probe_image(path: Path) -> Probe | str:
    """The size and mode in an image's header, or why it cannot be opened (the file is not decoded)."""
    try:
        with Image.open(path) as img:
            return Probe(img.width, img.height, img.mode)
    except DECODE_ERRORS as err:
        return str(err) or type(err).__name__


def choose_format(probes: Iterable[Probe], image_size: int | None = None,
                  channels: int | None = None) -> tuple[int, int, str]:
    """(image size, channels, why) for a folder: what was given, else what its images are.

    The size is the most common shorter side (the larger on a tie), at most ``MAX_AUTO_SIZE``; the images
    are grey when every one is, RGB otherwise."""
    probes = list(probes)
    reasons = []
    if image_size is None:
        sides = Counter(p.side for p in probes)
        common = max(sides.items(), key=lambda item: (item[1], item[0]))[0]
        image_size = min(common, MAX_AUTO_SIZE)
        capped = f", capped at {MAX_AUTO_SIZE} px to bound memory" if common > MAX_AUTO_SIZE else ""
        share = sides[common] / len(probes)
        reasons.append(f"{share:.0%} of the images are {common} px on their shorter side{capped}")
    if channels is None:
        colour = sorted({p.mode for p in probes} - _GREY)
        channels = 3 if colour else 1
        reasons.append(f"some images are colour ({', '.join(colour)})" if colour else "every image is grey")
    return image_size, channels, "; ".join(reasons)


def _parallel(function: Callable[[T], R], items: list[T], desc: str) -> Iterator[R]:
    """``function`` over ``items`` in a thread pool, in order, with a progress bar on big folders."""
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        yield from tqdm(pool.map(function, items), total=len(items), desc=desc, unit="img",
                        disable=len(items) <= _PROGRESS_FROM or not sys.stderr.isatty())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _names(paths: Iterable[Path], folder: Path) -> str:
    paths = list(paths)
    shown = ", ".join(p.relative_to(folder).as_posix() for p in paths[:_NAMES_SHOWN])
    return shown + (", ..." if len(paths) > _NAMES_SHOWN else "")


def _training_probes(root: Path, listing: FolderListing, probes: list[Probe | str]) -> list[Probe]:
    """The probes of the training images: the size and channels are chosen from them for every split, so
    train and test images always match."""
    train = split_folder(root, "train")
    if train != listing.folder:
        train_paths = list_images(root, "train").paths
        probes = list(_parallel(probe_image, train_paths, f"scanning {train.name}"))
    return [p for p in probes if isinstance(p, Probe)]


def read_folder(root: Path, split: str = "train", image_size: int | None = None,
                channels: int | None = None) -> ImageDataset:
    """An image folder as (N, channels, image_size, image_size) uint8; ids are paths relative to the split.

    ``image_size`` or ``channels`` None: chosen from the training images (``choose_format``) and logged."""
    if channels not in (None, *_MODES):
        raise SimCLRv2Error(f"image folders are read with 1 or 3 channels, not {channels}")
    if image_size is not None and image_size < 1:
        raise SimCLRv2Error(f"image_size must be >= 1, got {image_size}")
    root = Path(root)
    listing = list_images(root, split)
    folder, name = listing.folder, f"folder/{split}"
    probes = list(_parallel(probe_image, listing.paths, f"scanning {folder.name}"))
    failed = {p: why for p, why in zip(listing.paths, probes, strict=True) if isinstance(why, str)}
    readable = [(i, p) for i, (p, probe) in enumerate(zip(listing.paths, probes, strict=True)) if p not in failed]
    if not readable:
        raise nothing_readable(len(listing.paths), folder, failed)
    if image_size is None or channels is None:
        image_size, channels, why = choose_format(_training_probes(root, listing, probes), image_size, channels)
        log.info("%s: reading images at %d px, %d channel%s: %s; set data.image_size and data.channels to "
                 "choose otherwise", name, image_size, channels, "s" if channels > 1 else "", why)
    mode = _MODES[channels]
    images = torch.empty((len(readable), channels, image_size, image_size), dtype=torch.uint8)
    out = images.numpy()  # shares memory with `images`
    kept: list[int] = []
    arrays = _parallel(lambda item: try_decode(item[1], image_size, mode), readable, f"decoding {folder.name}")
    for array, (index, path) in zip(arrays, readable, strict=True):
        if isinstance(array, str):
            failed[path] = array
            continue
        out[len(kept)] = array[None] if channels == 1 else array.transpose(2, 0, 1)  # (S, S, C) -> (C, S, S)
        kept.append(index)
    if not kept:
        raise nothing_readable(len(listing.paths), folder, failed)
    if len(kept) < len(readable):
        images = images[: len(kept)].clone()  # drop the rows of images that failed to decode
    labels = None if listing.labels is None else torch.tensor([listing.labels[i] for i in kept])
    _check_classes(listing, labels, failed)
    read = [probes[i] for i in kept]
    summary = _summary(name, listing, failed, read, image_size, mode)
    if summary:
        log.log(logging.WARNING if failed or listing.others else logging.INFO, summary)
    return ImageDataset(images=images, labels=labels, classes=listing.classes,
                        ids=tuple(listing.paths[i].relative_to(folder).as_posix() for i in kept), name=name)


def _check_classes(listing: FolderListing, labels: torch.Tensor | None, failed: dict[Path, str]) -> None:
    """A class folder whose every image failed would vanish without a word: refuse it instead."""
    if labels is None or not failed:
        return
    present = set(labels.tolist())
    emptied = sorted({listing.labels[i] for i, p in enumerate(listing.paths) if p in failed} - present)
    if emptied:
        empty = listing.folder / listing.classes[emptied[0]]
        raise SimCLRv2Error(f"no image of class folder {empty} can be read (e.g. "
                            f"{_names([p for p in failed if p.parent == empty], listing.folder)}); "
                            "replace its images or remove the folder")


def _summary(name: str, listing: FolderListing, failed: dict[Path, str], read: list[Probe], image_size: int,
             mode: str) -> str:
    """One line: how many files were skipped (and which), converted from another mode, resized or cropped;
    empty when every file was an image already of the size and mode asked for."""
    folder, parts = listing.folder, []
    if listing.others:
        parts.append(f"skipped {len(listing.others)} non-image file{'s' * (len(listing.others) > 1)} "
                     f"({_names(listing.others, folder)})")
    if failed:
        parts.append(skipped_images(failed, folder))
    modes = Counter(p.mode for p in read if p.mode != mode)
    if modes:
        parts.append(f"converted {sum(modes.values())} to {mode} "
                     f"(from {', '.join(f'{n} {m}' for m, n in sorted(modes.items()))})")
    resized = sum(p.side != image_size for p in read)
    if resized:
        parts.append(f"resized {resized} whose shorter side was not {image_size} px")
    cropped = sum(p.width != p.height for p in read)
    if cropped:
        parts.append(f"centre-cropped {cropped} non-square")
    if not parts:
        return ""
    return f"{name}: read {len(read)} images; " + "; ".join(parts)
