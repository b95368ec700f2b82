"""Damaged dataset files give one line naming the file and what to do, never a traceback."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest

from simclrv2.data import DATASETS, load_dataset
from simclrv2.errors import SimCLRv2Error
from test_data_formats import write_cifar10, write_mnist_dir, write_pickle, write_stl10

WRITERS = {  # dataset -> (writes the files under a root, folder of the files inside it)
    "mnist": (lambda root: write_mnist_dir(root, gz=True), ""),
    "cifar10": (lambda root: write_cifar10(root, per_batch=2, n_test=2), "cifar-10-batches-py"),
    "stl10": (lambda root: write_stl10(root, n_train=2, n_test=1, n_unlabeled=1), "stl10_binary"),
}


def one_line_error(name: str, split: str, root: Path, file: Path) -> str:
    with pytest.raises(SimCLRv2Error) as caught:
        load_dataset(name, split, data_dir=root)
    message = str(caught.value)
    assert "\n" not in message and file.name in message, message
    return message


def errors_of_every_split(name: str, root: Path) -> list[str]:
    """The error of each split that fails to load; anything but a SimCLRv2Error fails the test."""
    errors = []
    for split in DATASETS[name].splits:
        try:
            load_dataset(name, split, data_dir=root)
        except SimCLRv2Error as err:
            errors.append(str(err))
    return errors


@pytest.mark.parametrize("name", WRITERS)
def test_every_file_cut_short_is_named_in_one_line(tmp_path, name):
    write, inside = WRITERS[name]
    write(tmp_path)
    for path in sorted((tmp_path / inside).iterdir()):
        data = path.read_bytes()
        for cut in sorted({c for c in (0, 1, 3, 9, 17, len(data) // 3, len(data) - 1) if c < len(data)}):
            path.write_bytes(data[:cut])
            errors = errors_of_every_split(name, tmp_path)
            assert any(path.name in e for e in errors), (path.name, cut, errors)
            assert all("\n" not in e for e in errors), errors
        path.write_bytes(data)


@pytest.mark.parametrize("payload", [
    b"\x80\x05\x96" + struct.pack("<Q", 2**62),  # BYTEARRAY8 claiming 4 EiB: memory or overflow error
    b"\x80\x02Pfoo\n.",  # a persistent id: pickle's message for it spans two lines
])
def test_cifar_pickle_with_a_damaged_opcode_is_one_line(tmp_path, payload):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(payload)
    assert "not a readable CIFAR pickle" in one_line_error("cifar10", "test", tmp_path, meta)


def test_cifar_labels_that_are_not_numbers_are_named(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(batch, {b"labels": ["cat", "dog"], b"data": [[0] * 3072] * 2})
    assert "'labels' should be a list of class numbers" in one_line_error("cifar10", "test", tmp_path, batch)


def test_cifar_class_names_that_are_not_a_list_are_named(tmp_path):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": 10}, protocol=2))
    assert "'label_names' should be a list of names" in one_line_error("cifar10", "test", tmp_path, meta)


def test_stl10_class_names_not_utf8_are_named(tmp_path):
    write_stl10(tmp_path)
    names = tmp_path / "stl10_binary" / "class_names.txt"
    names.write_bytes(b"\xff\xfeairplane\n")
    assert "is not UTF-8 text" in one_line_error("stl10", "train", tmp_path, names)


def test_idx_file_that_cannot_be_opened_is_named(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path, gz=False)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # tests run as root here, so chmod would not stop a read
    message = one_line_error("mnist", "train", tmp_path, tmp_path / "train-images-idx3-ubyte")
    assert "(Permission denied); check that the file is readable" in message
