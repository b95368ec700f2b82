"""Datasets as in-memory uint8 tensors: readers for each file format, where to find the files, downloads.

``load_dataset("fashion-mnist", "train")`` is the entry point; every reader returns an ``ImageDataset``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from simclrv2.data import cifar, download, idx, locate, stl10
from simclrv2.data.dataset import DatasetSpec, ImageDataset, convert_channels, resize_images
from simclrv2.data.folder import read_folder
from simclrv2.data.guard import check_read
from simclrv2.errors import SimCLRv2Error

__all__ = ["DATASETS", "ImageDataset", "download_dataset", "find_data_dir", "load_dataset"]

_TRAIN_TEST = ("train", "test")

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "Fashion-MNIST", _TRAIN_TEST, idx.FILES,
        partial(idx.read_idx_split, name="fashion-mnist", classes=idx.FASHION_MNIST_CLASSES),
        apt_package="dataset-fashion-mnist", debian_dir="fashion-mnist"),
    "mnist": DatasetSpec(
        "MNIST", _TRAIN_TEST, idx.FILES, partial(idx.read_idx_split, name="mnist", classes=idx.MNIST_CLASSES),
        debian_dir="mnist"),
    "cifar10": DatasetSpec("CIFAR-10", _TRAIN_TEST, cifar.CIFAR10_FILES, cifar.read_cifar10,
                           subdirs=("cifar-10-batches-py",)),
    "cifar100": DatasetSpec("CIFAR-100", _TRAIN_TEST, cifar.CIFAR100_FILES, cifar.read_cifar100,
                            subdirs=("cifar-100-python",)),
    "stl10": DatasetSpec("STL-10", stl10.SPLITS, stl10.FILES, stl10.read_stl10, subdirs=("stl10_binary",)),
    # Image folders are read from data_dir only, and also take image_size and channels.
    "folder": DatasetSpec("image folder", _TRAIN_TEST, {}, read_folder),
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise SimCLRv2Error(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def find_data_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding dataset ``name``: ``data_dir`` if given (checked, never second-guessed), else
    the first of ``$SIMCLRV2_DATA/<name>``, ``$SIMCLRV2_DATA``, the cache and Debian's folder that holds
    its files."""
    spec = _spec(name)
    if name != "folder":
        return locate.locate(name, spec, data_dir)
    if data_dir is None:
        raise SimCLRv2Error("the folder dataset reads the images under data.data_dir; set it to a folder "
                            "with one sub-folder of images per class (or only images, for unlabeled data)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise SimCLRv2Error(f"image folder {path} not found; set data.data_dir to a folder of images")
    return path


def download_dataset(name: str, dest: Path | None = None) -> Path:
    """Downloads and verifies dataset ``name`` into ``dest`` (default: the cache), unless already there;
    returns the folder holding its files."""
    spec = _spec(name)
    if name not in download.RESOURCES:
        raise SimCLRv2Error(f"{name} cannot be downloaded; downloadable: {', '.join(download.RESOURCES)}")
    dest = Path(dest).expanduser() if dest is not None else locate.cache_dir(name)
    found = locate.holding_dir(dest, spec, spec.all_files)
    if found is not None:
        return found
    for resource in download.RESOURCES[name]:
        if resource.extract or not (dest / resource.filename).is_file():  # final names are verified files
            download.fetch(resource, dest)
    found = locate.holding_dir(dest, spec, spec.all_files)
    if found is None:
        raise SimCLRv2Error(f"downloaded {name} into {dest}, but {locate.missing_file(dest, spec.all_files)} "
                            "is still missing there; remove the folder and download again")
    return found


def _data_folder(name: str, spec: DatasetSpec, data_dir: str | Path | None, download: bool) -> Path:
    if data_dir is None:
        found = locate.search(name, spec)
        if found is None and not download:
            raise locate.not_found_error(name, spec)
        return found if found is not None else download_dataset(name)
    path = Path(data_dir).expanduser()
    if download and locate.holding_dir(path, spec) is None:
        return download_dataset(name, path)
    return locate.check_data_dir(path, spec)


def _first(dataset: ImageDataset, limit: int) -> ImageDataset:
    return dataset.subset(torch.arange(min(limit, len(dataset)))) if 0 < limit < len(dataset) else dataset


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 image_size: int | None = None, download: bool = False,
                 channels: int | None = None, limit: int = 0) -> ImageDataset:
    """One split of a dataset, in memory as a uint8 (N, C, S, S) tensor.

    image_size: the side of the returned images; None keeps the dataset's own (image folders: the most
        common shorter side of the training images, at most 96 px, after resizing the shorter side
        and centre-cropping).
    download: fetch the dataset into the cache (or into ``data_dir``) when it is not found.
    channels: 1 (grey) or 3 (RGB); None keeps the dataset's own (image folders: 1 when every training image
        is grey, else 3).
    limit: keep only the first ``limit`` images (0: all), taken before resizing, so a quick run at a large
        ``image_size`` does not resize the images it drops.
    """
    spec = _spec(name)
    if split not in spec.splits:
        raise SimCLRv2Error(f"{name} has no split {split!r}; choose one of: {', '.join(spec.splits)}")
    check_read(name, split)  # a stage's test split opens only for its final evaluation
    if image_size is not None and image_size < 1:
        raise SimCLRv2Error(f"image_size must be >= 1 (or None for the dataset's own size), got {image_size}")
    if channels not in (None, 1, 3):
        raise SimCLRv2Error(f"channels must be 1 or 3 (or None for the dataset's own), got {channels}")
    if limit < 0:
        raise SimCLRv2Error(f"limit must be >= 0 (0 keeps every image), got {limit}")
    if name == "folder":
        root = find_data_dir(name, data_dir)
        return _first(read_folder(root, split, image_size, channels), limit)
    dataset = _first(spec.read(_data_folder(name, spec, data_dir, download), split), limit)
    images = dataset.images
    if image_size is not None:
        images = resize_images(images, image_size)
    if channels is not None:
        images = convert_channels(images, channels)
    return dataset if images is dataset.images else replace(dataset, images=images)
