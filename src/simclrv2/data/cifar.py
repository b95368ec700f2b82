"""CIFAR-10 and CIFAR-100 in their "python version" layout: pickled dicts with bytes keys.

Pickle can run arbitrary code, so batches are read with an unpickler that builds numpy arrays, lists and
dicts and nothing else.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from simclrv2.data.dataset import ImageDataset, index_ids, require_file
from simclrv2.errors import SimCLRv2Error

CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)) + ("batches.meta",),
    "test": ("test_batch", "batches.meta"),
}
CIFAR100_FILES = {"train": ("train", "meta"), "test": ("test", "meta")}

_PIXELS = 3 * 32 * 32

# What a numpy array needs to be rebuilt, under the module names of numpy 1 and 2 (and the bytes helper of
# protocol 2 pickles written by Python 3).
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the official files were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise SimCLRv2Error(f"{self.path} wants {module}.{name}; a CIFAR batch holds only arrays and "
                                "lists, so it was not loaded (is it the official python-version file?)")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 renamed numpy.core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, path).load()
    except OSError as err:
        raise SimCLRv2Error(f"cannot read {path} ({err.strerror or err}); check that the file is readable") from err
    # MemoryError, OverflowError: a damaged length field asks for a huge allocation.
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__  # pickle's messages span lines
        raise SimCLRv2Error(f"{path} is not a readable CIFAR pickle ({reason}); download it again") from err
    if not isinstance(batch, dict):
        raise SimCLRv2Error(f"{path} should hold a dict, found {type(batch).__name__}")
    return batch


def _field(batch: dict, key: bytes, path: Path):
    if key not in batch:
        raise SimCLRv2Error(f"{path} has no {key.decode()!r} entry; is it a CIFAR file of the right kind?")
    return batch[key]


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = np.asarray(_field(batch, b"data", path))
    try:
        labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as err:
        raise SimCLRv2Error(f"{path}: {label_key.decode()!r} should be a list of class numbers ({err}); "
                            "download the file again") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise SimCLRv2Error(f"{path}: 'data' should be uint8 (N, {_PIXELS}), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise SimCLRv2Error(f"{path} has {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise SimCLRv2Error(f"{path} has labels outside 0..{num_classes - 1}")
    return data, labels


def _class_names(path: Path, key: bytes, count: int) -> tuple[str, ...]:
    listed = _field(_unpickle(path), key, path)
    if not isinstance(listed, (list, tuple)):
        raise SimCLRv2Error(f"{path}: {key.decode()!r} should be a list of names, found {type(listed).__name__}; "
                            "download the file again")
    names = tuple(n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in listed)
    if len(names) != count:
        raise SimCLRv2Error(f"{path} lists {len(names)} class names, expected {count}")
    return names


def _build(data: list[np.ndarray], labels: list[np.ndarray], classes: tuple[str, ...],
           name: str) -> ImageDataset:
    images = np.concatenate(data).reshape(-1, 3, 32, 32)  # rows of 1024 R, then G, then B values, row-major
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
        ids=index_ids(images.shape[0]),
        name=name,
    )


def read_cifar10(directory: Path, split: str) -> ImageDataset:
    """CIFAR-10 from ``cifar-10-batches-py``: five training batches (50,000 images) or the test batch."""
    purpose = f"the cifar10 {split} split"
    paths = [require_file(directory, f, purpose) for f in CIFAR10_FILES[split]]
    classes = _class_names(paths[-1], b"label_names", 10)
    batches = [_read_batch(p, b"labels", 10) for p in paths[:-1]]
    return _build([d for d, _ in batches], [y for _, y in batches], classes, f"cifar10/{split}")


def read_cifar100(directory: Path, split: str) -> ImageDataset:
    """CIFAR-100 from ``cifar-100-python`` with its 100 fine labels."""
    purpose = f"the cifar100 {split} split"
    data_path, meta_path = (require_file(directory, f, purpose) for f in CIFAR100_FILES[split])
    classes = _class_names(meta_path, b"fine_label_names", 100)
    data, labels = _read_batch(data_path, b"fine_labels", 100)
    return _build([data], [labels], classes, f"cifar100/{split}")
