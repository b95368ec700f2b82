"""The data a stage reads: the training images, the validation split held out of them, label subsets drawn from
the rest, and the test split, which only the final evaluation opens (nothing is chosen on it): a stage runs under
:func:`seals_test_split`, and its final scores inside ``final_evaluation()`` (data/guard.py)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from simclrv2.data import ImageDataset, load_dataset
from simclrv2.data.folder import class_folder_names
from simclrv2.data.guard import SealedSplitError, sealed
from simclrv2.data.streaming import StreamData, choose_stream, folder_index
from simclrv2.data.streaming.images import StreamedImages
from simclrv2.data.streaming.index import with_classes
from simclrv2.data.subsets import parse_subset_spec, select_subset, subset_indices
from simclrv2.errors import SimCLRv2Error, UnknownClassError
from simclrv2.logs import get_logger

# the validation split does not change with run.seed, so seeds vary the labelled subset and the initialisation
# while every run is judged on the same images
VALIDATION_SEED = 20_06_10029

Stage = TypeVar("Stage", bound=Callable)


def seals_test_split(stage: Stage) -> Stage:
    """Runs the stage ``stage(config, ...)`` with ``config.data.test_split`` sealed: any read of it fails except
    inside the stage's ``final_evaluation()`` block."""

    @functools.wraps(stage)
    def run(config, *args, **kwargs):
        with sealed(config.data.test_split, stage.__name__):
            return stage(config, *args, **kwargs)

    return run


def load_split(data, split: str, limit: int = 0) -> ImageDataset:
    """One split of the configured dataset (resized by the reader to ``data.image_size`` when given)."""
    dataset = load_dataset(
        data.dataset,
        split=split,
        data_dir=data.data_dir or None,
        image_size=data.image_size or None,
        download=data.download,
        channels=data.channels or None,
        limit=limit,
    )
    if len(dataset) == 0:
        raise SimCLRv2Error(f"{dataset.name} holds no images")
    return dataset


def data_for_network(data, in_channels: int, image_size: int):
    """The ``[data]`` section a trained network reads its data with: its own channels and image size unless the
    user set them (an image folder's format is otherwise chosen from the images, which may differ)."""
    return dataclasses.replace(data, channels=data.channels or in_channels, image_size=data.image_size or image_size)


def load_train(data) -> ImageDataset:
    return load_split(data, data.train_split, data.train_limit)


def load_test(data) -> ImageDataset | None:
    """The test split for the final evaluation, or None when the dataset has no labelled one."""
    try:
        test = load_split(data, data.test_split)
    except (SealedSplitError, UnknownClassError):
        raise  # the stage's fault, or a broken test split: neither is a dataset without one
    except SimCLRv2Error as exc:
        get_logger().info(f"no test evaluation: {exc}")
        return None
    return test if test.labels is not None else None


def check_test_classes(data, classes: tuple[str, ...]) -> None:
    """Refuses a folder test split with a class the training images lack *before* the stage trains, so the
    final evaluation cannot fail after hours of training. Only the class folders' names are listed: no test
    image is read, so the sealed split stays closed."""
    if data.dataset != "folder" or not classes:
        return
    test = Path(data.data_dir) / data.test_split
    if data.test_split == data.train_split or not test.is_dir():
        return
    unknown = [name for name in class_folder_names(test) if name not in classes]
    if unknown:
        raise UnknownClassError.of_folder(test / unknown[0])


@dataclass(frozen=True, eq=False)
class TrainingData:
    """All training images (the unlabeled pool) and their labelled part split into validation and the rest;
    in memory, or streamed (:class:`StreamedImages`: the same selections, decoded when read)."""

    train: ImageDataset | StreamedImages
    labelled: ImageDataset | StreamedImages  # the training split, or the labelled "train" split beside unlabeled data
    val_indices: torch.Tensor  # into ``labelled``: held out to choose settings, never fine-tuned on
    pool_indices: torch.Tensor  # into ``labelled``: where label subsets and kNN banks come from

    @property
    def val(self) -> ImageDataset | StreamedImages | None:
        return self.labelled.subset(self.val_indices) if self.val_indices.numel() else None

    def labelled_subset(self, spec: str, seed: int) -> torch.Tensor:
        """Sorted indices into ``labelled`` of a class-balanced subset of the non-validation images. A
        percentage is of all labelled training images (1 % of Fashion-MNIST is 600 images), so it means the
        same with or without a validation split."""
        parsed = parse_subset_spec(spec)
        if parsed.kind == "file":
            chosen = subset_indices(self.labelled, spec, seed)
            overlap = int(torch.isin(chosen, self.val_indices).sum())
            if overlap:
                get_logger().warning(f"warning: {overlap} images of {spec} are in the validation split, so "
                                     "validation scores are optimistic; set data.val_size = 0 or use another list")
            return chosen
        if parsed.kind == "fraction":
            count = min(len(self.pool_indices), math.floor(round(len(self.labelled) * float(parsed.value), 6)))
            spec = str(count)
        pool = self.pool_indices
        within = select_subset(self.labelled.labels[pool], parse_subset_spec(spec), seed)
        return pool[within].sort().values


def training_data(data) -> TrainingData:
    """The training images, their labelled part, and a class-balanced validation split of ``data.val_size``."""
    train = load_train(data)
    labelled = train
    if train.labels is None:
        try:
            labelled = load_split(data, "train")
        except SimCLRv2Error:
            labelled = train
    if labelled.labels is None:
        empty = torch.zeros(0, dtype=torch.int64)
        return TrainingData(train, labelled, empty, torch.arange(len(labelled)))
    return TrainingData(train, labelled, *validation_split(labelled.labels, labelled.num_classes, data))


def streamed_training_data(stream: StreamData, data) -> TrainingData:
    """:func:`training_data` of a streamed collection: the same validation split and pool, nothing decoded."""
    train = StreamedImages(stream.source, torch.arange(len(stream.source)), stream.image_size, stream.channels,
                           stream.workers, stream.name)
    labelled = train
    if train.labels is None and data.dataset == "folder" and data.train_split != "train":
        try:  # as in memory: the labelled "train" split beside unlabeled images
            source = folder_index(data.data_dir, "train")
            labelled = StreamedImages(source, torch.arange(len(source)), stream.image_size, stream.channels,
                                      stream.workers, "folder/train")
        except SimCLRv2Error:
            pass
    if labelled.labels is None:
        empty = torch.zeros(0, dtype=torch.int64)
        return TrainingData(train, labelled, empty, torch.arange(len(labelled)))
    return TrainingData(train, labelled, *validation_split(labelled.labels, labelled.num_classes, data))


def stage_data(data) -> tuple[TrainingData, StreamData | None]:
    """The training data as ``data.stream`` chooses (one log line says which): in memory, or streamed with the
    stream it is read from. Every stage reads its images through this one choice."""
    stream = choose_stream(data)
    return (training_data(data) if stream is None else streamed_training_data(stream, data)), stream


def test_split_for(data, stream: StreamData | None, classes: tuple[str, ...]) -> ImageDataset | StreamedImages | None:
    """The test split for a stage's final scores (call it inside ``final_evaluation()``), its labels those of
    the training ``classes`` by name; None when there is none (shards hold one split). Streamed training
    images: the test split is streamed too, decoded batch by batch at their size and channels."""
    if stream is None:
        return load_test(data)
    if data.dataset == "webdataset":
        get_logger().info("no test evaluation: WebDataset shards hold the training images only")
        return None
    try:
        source = folder_index(data.data_dir, data.test_split)
    except SealedSplitError:
        raise  # read before the final evaluation: the stage's fault, not a folder without a test split
    except SimCLRv2Error as exc:
        get_logger().info(f"no test evaluation: {exc}")
        return None
    if source.labels is None:
        return None
    # a damaged test image is refused with its name when its batch is decoded, as in streamed training
    return StreamedImages(with_classes(source, classes), torch.arange(len(source)), stream.image_size,
                          stream.channels, stream.workers, f"folder/{data.test_split}")


def validation_split(labels: torch.Tensor, num_classes: int, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, rest): indices into labelled images, a class-balanced split of ``data.val_size`` and the
    others. A function of the labels alone, so streamed and in-memory data hold out the same images."""
    size = data.resolved_val_size(len(labels))
    if size >= len(labels):
        raise SimCLRv2Error(f"data.val_size = {size} leaves no labelled training images out of {len(labels)}; "
                            "lower it")
    if size and size < num_classes:
        size = 0
    val = select_subset(labels, parse_subset_spec(str(size)), VALIDATION_SEED) if size else (
        torch.zeros(0, dtype=torch.int64))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return val, keep.nonzero().flatten()
