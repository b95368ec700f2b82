"""Shared fixtures: a tiny dataset in the real Fashion-MNIST file format, a config for quick runs, the runs the
stages write on it (one pretraining, one fine-tuning: every test module reads the same ones), a recorder of the
splits the reader opens, and a cache folder of the test's own for the streaming tests."""

from __future__ import annotations

import dataclasses
import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from simclrv2.config import load_config
from simclrv2.data import DATASETS, guard


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` laid out channels_last, the layout the compiled convolution kernels take."""
    return t.contiguous(memory_format=torch.channels_last)


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    """XDG_CACHE_HOME inside the test's folder: the streamed file index's cache is never another test's. The
    streaming test modules ask for it with ``pytestmark = pytest.mark.usefixtures("own_cache")``; it goes through
    the test's monkeypatch, so a test scopes its other patches with ``monkeypatch.context()`` (an undo() drops it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


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


# The runs below are written by the stages themselves and shared by every module (session scope): read them, never
# change them; a test that needs to change a run copies it or writes its own.


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, tiny_fashion) -> Path:
    """A finished tiny pretraining run: 2 epochs of 6 steps, kNN on validation at init and after each epoch, a
    metrics record per step."""
    from simclrv2.stages.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("pretrained") / "run"
    pretrain(quick_config_values(tiny_fashion, **{"run.log_every": 1}), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def random_encoder(tmp_path_factory, tiny_fashion) -> Path:
    """The same network after 6 steps at a rate of 1e-12: random weights, BN statistics of the data. The
    baseline a pretrained encoder must beat."""
    from simclrv2.stages.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("random-encoder") / "run"
    pretrain(quick_config_values(tiny_fashion, **{"run.knn_every": 0, "pretrain.epochs": 1,
                                                  "pretrain.optimizer.base_lr": 1e-12}), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory, tiny_fashion, pretrained):
    """(run directory, StageResult) of the pretrained network fine-tuned from head layer 1 on 10 % of the labels
    (40 images), long enough to learn: 80 AdamW steps, validation after every epoch."""
    from simclrv2.stages.finetune import finetune

    run_dir = tmp_path_factory.mktemp("finetuned") / "run"
    config = quick_config_values(tiny_fashion, **{"finetune.pretrained": pretrained, "finetune.labels": "10%",
                                                  "finetune.epochs": 3, "finetune.min_steps": 80,
                                                  "finetune.optimizer.name": "adamw",
                                                  "finetune.optimizer.base_lr": 3e-3,
                                                  "finetune.eval_every": 1})
    return run_dir, finetune(config, run_dir)


@dataclasses.dataclass(frozen=True)
class SplitRead:
    """One split the dataset reader opened, and the guard's state at that moment (data/guard.py)."""

    split: str
    sealed: str | None  # the split the running stage sealed (None: outside any stage)
    in_final_evaluation: bool


def record_split_reads(monkeypatch, dataset: str = "fashion-mnist") -> list[SplitRead]:
    """Records every split the reader of ``dataset`` opens (below the guard: what is really read)."""
    spec, reads = DATASETS[dataset], []

    def read(folder, split):
        reads.append(SplitRead(split, guard.sealed_split(), guard.in_final_evaluation()))
        return spec.read(folder, split)

    monkeypatch.setitem(DATASETS, dataset, dataclasses.replace(spec, read=read))
    return reads


def assert_test_split_read_only_in_final_evaluations(reads: list[SplitRead], evaluations: int) -> None:
    """Every read happened inside a stage that sealed the test split; the test split was read ``evaluations``
    times, each inside a final evaluation; the training split was read before, outside it."""
    assert reads and all(r.sealed == "test" for r in reads), reads
    test_reads = [r for r in reads if r.split == "test"]
    assert len(test_reads) == evaluations and all(r.in_final_evaluation for r in test_reads), reads
    assert any(r.split == "train" and not r.in_final_evaluation for r in reads), reads


@pytest.fixture(scope="session")
def kernels():
    """The compiled CPU kernels (simclrv2.models.cpu_kernels); tests that need them skip without a C++ compiler."""
    from simclrv2.models.cpu_kernels import build_kernels, compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler to build the compiled CPU kernels")
    built = build_kernels()
    assert built is not None, "the kernels failed to build or were set aside (see the warning above)"
    return built


@pytest.fixture
def winograd_kernels(kernels):
    """The compiled kernels where they include the Winograd convolution (built on AVX2 with FMA only)."""
    if not kernels.has_winograd_conv():
        pytest.skip("the Winograd convolution is built on CPUs with AVX2 and FMA only")
    return kernels


@pytest.fixture
def fused(kernels):
    """The compiled kernels on for one test, and the switch back as it was afterwards."""
    from simclrv2.models import cpu_kernels

    before = dict(cpu_kernels._KERNELS)
    cpu_kernels._KERNELS["active"] = kernels
    yield kernels
    cpu_kernels._KERNELS.clear()
    cpu_kernels._KERNELS.update(before)


@pytest.fixture
def unfused():
    """The compiled kernels off for one test (PyTorch's ops), and the switch back as it was afterwards."""
    from simclrv2.models import cpu_kernels

    before = dict(cpu_kernels._KERNELS)
    cpu_kernels._KERNELS.pop("active", None)
    yield
    cpu_kernels._KERNELS.clear()
    cpu_kernels._KERNELS.update(before)


@pytest.fixture
def amx(monkeypatch):
    """A CPU whose oneDNN runs AMX, where the convolution's GEMM rules apply (CI machines may lack it)."""
    from simclrv2.models import conv_rules

    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", True)
