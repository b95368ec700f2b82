"""Shared fixtures: a tiny dataset in the real Fashion-MNIST file format, and a config for quick runs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from simclrv2.config import load_config


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format): magic 0x0000 08 ndim, big-endian dims, then the uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def class_patterns(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 images whose class is visible (a bright square at a class-specific place) under noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        row, col = 3 + 7 * (label // 4), 3 + 6 * (label % 4)
        images[i, row : row + 6, col : col + 6] += 180
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory) -> Path:
    """A folder with train (400 images) and t10k (200) IDX files, 10 balanced classes."""
    folder = tmp_path_factory.mktemp("tiny-fashion-mnist")
    for split, n, seed in (("train", 400, 0), ("t10k", 200, 1)):
        labels = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", class_patterns(labels, seed))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


QUICK = {
    "model.width_multiplier": "0.125",
    "pretrain.epochs": "2",
    "pretrain.batch_size": "64",
    "finetune.epochs": "2",
    "finetune.min_steps": "0",
    "finetune.batch_size": "32",
    # the tiny classes differ only by where a square sits: flips and large crops would swap them
    "finetune.crop": "pad",
    "finetune.flip_prob": "0",
    "supervised.flip_prob": "0",
    "distill.crop": "pad",
    "distill.flip_prob": "0",
    "supervised.epochs": "2",
    "supervised.min_steps": "0",
    "supervised.batch_size": "32",
    "distill.epochs": "1",
    "distill.student_init": "scratch",
    "distill.batch_size": "64",
    "evaluate.linear_epochs": "20",
    "run.progress": "false",
    "run.precision": "fp32",
    "run.knn_every": "1",
    "run.knn_k": "20",
    "run.eval_batch_size": "200",
    "pipeline.embedding_samples": "50",
}


def quick_config_values(data_dir: Path, **overrides):
    """A config that trains a width-0.125 ResNet-18 for a few steps on the tiny dataset."""
    values = {"data.data_dir": str(data_dir), **QUICK}
    values.update({k: str(v) for k, v in overrides.items()})
    return load_config(None, values)


@pytest.fixture()
def quick_config(tiny_fashion):
    return lambda **overrides: quick_config_values(tiny_fashion, **overrides)


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory):
    """A fine-tuned run directory of a tiny classifier (read only: the inference tests share it)."""
    from inference_helpers import write_classifier_run

    return write_classifier_run(tmp_path_factory.mktemp("finetune"))


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory):
    """A pretraining run directory of a tiny SimCLR network (read only)."""
    from inference_helpers import write_pretrain_run

    return write_pretrain_run(tmp_path_factory.mktemp("pretrain"))
