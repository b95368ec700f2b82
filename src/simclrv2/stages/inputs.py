"""Datasets for a stage, read once from the ``[data]`` section and kept in memory as uint8 tensors."""

from __future__ import annotations

import torch

from simclrv2.data import ImageDataset, load_dataset
from simclrv2.errors import SimCLRv2Error


def load_split(data, split: str, limit: int = 0) -> ImageDataset:
    """One split of the configured dataset (resized by the reader to ``data.image_size`` when given)."""
    dataset = load_dataset(
        data.dataset,
        split=split,
        data_dir=data.data_dir or None,
        image_size=data.image_size or None,
        download=data.download,
    )
    if limit:
        dataset = dataset.subset(torch.arange(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise SimCLRv2Error(f"{dataset.name} holds no images")
    return dataset


def load_train(data) -> ImageDataset:
    return load_split(data, data.train_split, data.train_limit)


def load_test(data) -> ImageDataset:
    return load_split(data, data.test_split)


def labelled_train(data, train: ImageDataset) -> ImageDataset:
    """The labelled training images: the training split itself, or the dataset's ``train`` split when the
    training split is unlabeled (STL-10's unlabeled images, say)."""
    if train.labels is not None:
        return train
    labelled = load_split(data, "train")
    labelled.require_labels("a labelled training split")
    return labelled
