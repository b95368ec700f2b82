"""Readers of each on-disk format, fed small files written in the real formats under tmp_path."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.data import load_dataset
from simclrv2.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES
from simclrv2.data.stl10 import STL10_CLASSES
from simclrv2.errors import SimCLRv2Error

# ---------------------------------------------------------------------------------------------- IDX


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    """The IDX layout: 0, 0, type 0x08 (ubyte), ndim, then each dim as a big-endian uint32, then the bytes."""
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    (path.parent / (path.name + ".gz")).write_bytes(gzip.compress(data)) if gz else path.write_bytes(data)


def write_mnist_dir(folder, gz: bool = True, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_split_holds_the_file_contents(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("fashion-mnist", split, data_dir=tmp_path)
        images, labels = arrays[prefix]
        assert ds.images.shape == (len(images), 1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.images.is_contiguous()
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
        assert ds.ids[:2] == ("00000", "00001") and len(set(ds.ids)) == len(ds)
        assert ds.name == f"fashion-mnist/{split}"
    assert ds.classes == FASHION_MNIST_CLASSES and ds.classes[0] == "T-shirt/top"


def test_mnist_classes_are_the_digits(tmp_path):
    write_mnist_dir(tmp_path)
    assert load_dataset("mnist", data_dir=tmp_path).classes == tuple("0123456789") == MNIST_CLASSES


def test_idx_with_a_foreign_magic_number_is_refused(tmp_path):
    write_mnist_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0c\x03" + path.read_bytes()[4:])  # type 0x0C: int32, not ubyte
    with pytest.raises(SimCLRv2Error, match="train-images-idx3-ubyte is not an IDX file of unsigned bytes"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_truncated_idx_file_is_refused(tmp_path):
    write_mnist_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SimCLRv2Error, match="truncated or corrupt"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_damaged_gzip_is_refused(tmp_path):
    write_mnist_dir(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(SimCLRv2Error, match="t10k-labels-idx1-ubyte.gz is a damaged gzip file"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)


def test_idx_label_count_must_match_image_count(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), gz=True)
    with pytest.raises(SimCLRv2Error, match="do not belong together"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_idx_label_beyond_the_classes_is_refused(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10, np.uint8), gz=True)
    with pytest.raises(SimCLRv2Error, match="has label 10, but fashion-mnist has 10 classes"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_idx_images_must_be_square_3d(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 28, 20), np.uint8), gz=True)
    with pytest.raises(SimCLRv2Error, match="should hold square images"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# -------------------------------------------------------------------------------------------- CIFAR


def write_pickle(path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(root, per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py`` as in the official archive; returns (images (N, 3, 32, 32), labels)
    per split."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        # Protocol 2 from Python 3 stores bytes via _codecs.encode; the default protocol on the test batch.
        write_pickle(folder / name, {b"batch_label": b"batch", b"labels": labels,
                                     b"data": images.reshape(n, 3072), b"filenames": [b"x.png"] * n},
                     protocol=pickle.DEFAULT_PROTOCOL if name == "test_batch" else 2)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(images)
        out[split][1].extend(labels)
    write_pickle(folder / "batches.meta", {b"label_names": [f"class{k}".encode() for k in range(10)],
                                           b"num_vis": 3072})
    return {split: (np.concatenate(ims), labels) for split, (ims, labels) in out.items()}


def test_cifar10_concatenates_the_five_batches_in_order(tmp_path):
    expected = write_cifar10(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("cifar10", split, data_dir=tmp_path)
        images, labels = expected[split]
        assert ds.images.shape == (len(images), 3, 32, 32) and ds.images.dtype == torch.uint8
        assert torch.equal(ds.images, torch.from_numpy(images))  # rows of R, then G, then B: channel-first
        assert ds.labels.tolist() == labels and ds.labels.dtype == torch.int64
        assert ds.classes == tuple(f"class{k}" for k in range(10))
        assert ds.ids[-1] == f"{len(images) - 1:05d}"
    assert len(load_dataset("cifar10", data_dir=tmp_path)) == 15


def test_cifar10_data_dir_may_be_the_extracted_folder_or_its_parent(tmp_path):
    write_cifar10(tmp_path)
    a = load_dataset("cifar10", "test", data_dir=tmp_path)
    b = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert torch.equal(a.images, b.images)


def test_cifar100_uses_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    fine = [0, 99, 5, 42, 7, 1]
    for name in ("train", "test"):
        write_pickle(folder / name, {b"data": images.reshape(6, 3072), b"fine_labels": fine,
                                     b"coarse_labels": [0] * 6, b"filenames": [b"f"] * 6})
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
                                   b"coarse_label_names": [b"c"] * 20})
    ds = load_dataset("cifar100", "test", data_dir=tmp_path)
    assert ds.labels.tolist() == fine and ds.num_classes == 100 and ds.classes[99] == "fine99"
    assert torch.equal(ds.images, torch.from_numpy(images))


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": _RunsCode(), b"labels": []})
    with pytest.raises(SimCLRv2Error, match="wants posix.getcwd"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_missing_test_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(SimCLRv2Error, match="has no test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_batch_with_wrong_row_length_is_refused(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
                 {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(SimCLRv2Error, match=r"'data' should be uint8 \(N, 3072\)"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------- STL-10


def write_stl_images(path, images: np.ndarray) -> None:
    """STL-10 order: per image, per channel, the pixels column by column (Fortran order)."""
    path.write_bytes(b"".join(channel.tobytes(order="F") for image in images for channel in image))


def write_stl10(root, n_train: int = 3, n_test: int = 2, n_unlabeled: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for part, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        write_stl_images(folder / f"{part}_X.bin", images)
        labels = rng.integers(1, 11, n, dtype=np.uint8)  # stored 1..10
        if part != "unlabeled":
            (folder / f"{part}_y.bin").write_bytes(labels.tobytes())
        out[part] = (images, labels)
    return out


def test_stl10_images_come_back_upright(tmp_path):
    image = np.zeros((1, 3, 96, 96), np.uint8)
    image[0, :, 0, :] = 255  # the top row bright: transposed by mistake it would be the left column
    image[0, 0, 10:20, 50:60] = 7  # an off-diagonal block in the red channel only
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    write_stl_images(folder / "train_X.bin", image)
    (folder / "train_y.bin").write_bytes(bytes([3]))
    ds = load_dataset("stl10", data_dir=tmp_path)
    assert ds.images.shape == (1, 3, 96, 96)
    assert (ds.images[0, :, 0, :] == 255).all() and (ds.images[0, :, 1:, 0] == 0).all()
    assert (ds.images[0, 0, 10:20, 50:60] == 7).all() and (ds.images[0, 1:, 10:20, 50:60] == 0).all()
    assert ds.labels.tolist() == [2]  # 3 on disk is class index 2


def test_stl10_labelled_splits(tmp_path):
    expected = write_stl10(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("stl10", split, data_dir=tmp_path)
        images, labels = expected[split]
        assert torch.equal(ds.images, torch.from_numpy(images)) and ds.images.is_contiguous()
        assert ds.labels.tolist() == (labels.astype(int) - 1).tolist()
        assert ds.classes == STL10_CLASSES and ds.name == f"stl10/{split}"


def test_stl10_unlabeled_splits_have_no_labels(tmp_path):
    expected = write_stl10(tmp_path)
    unlabeled = load_dataset("stl10", "unlabeled", data_dir=tmp_path)
    assert unlabeled.labels is None and unlabeled.classes == () and len(unlabeled) == 4
    assert torch.equal(unlabeled.images, torch.from_numpy(expected["unlabeled"][0]))
    both = load_dataset("stl10", "train+unlabeled", data_dir=tmp_path)
    assert both.labels is None and len(both) == 7 and both.ids[-1] == "00006"
    assert torch.equal(both.images[:3], torch.from_numpy(expected["train"][0]))  # train first, then unlabeled
    assert torch.equal(both.images[3:], unlabeled.images)


def test_stl10_class_names_file_is_used(tmp_path):
    write_stl10(tmp_path)
    names = [f"n{k}" for k in range(10)]
    (tmp_path / "stl10_binary" / "class_names.txt").write_text("\n".join(names) + "\n")
    assert load_dataset("stl10", "test", data_dir=tmp_path).classes == tuple(names)


def test_stl10_file_of_partial_images_is_refused(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(SimCLRv2Error, match="test_X.bin has .* not a whole number of 3x96x96 images"):
        load_dataset("stl10", "test", data_dir=tmp_path)


def test_stl10_unlabeled_missing_file_is_named(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    with pytest.raises(SimCLRv2Error, match="has no unlabeled_X.bin"):
        load_dataset("stl10", "unlabeled", data_dir=tmp_path)


# ------------------------------------------------------------------------------------- image folders


def save(path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_folder_classes_are_sorted_subfolders_and_ids_relative_paths(tmp_path):
    save(tmp_path / "dog" / "b.png", rgb(20, 20, 0))
    save(tmp_path / "cat" / "z.png", rgb(20, 20, 1))
    save(tmp_path / "cat" / "a.png", rgb(20, 20, 2))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    save(tmp_path / "cat" / ".hidden.png", rgb(20, 20, 3))
    ds = load_dataset("folder", data_dir=tmp_path, image_size=20)
    assert ds.classes == ("cat", "dog") and ds.ids == ("cat/a.png", "cat/z.png", "dog/b.png")
    assert ds.labels.tolist() == [0, 0, 1] and ds.labels.dtype == torch.int64
    assert ds.images.shape == (3, 3, 20, 20) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[0], torch.from_numpy(rgb(20, 20, 2)).permute(2, 0, 1))  # PNG is lossless
    assert ds.name == "folder/train"


@pytest.mark.parametrize("h, w", [(20, 40), (40, 20)])
def test_folder_images_are_centre_cropped_on_the_longer_side(tmp_path, h, w):
    image = rgb(h, w, 5)
    save(tmp_path / "only" / "x.png", image)
    ds = load_dataset("folder", data_dir=tmp_path, image_size=20)
    top, left = (h - 20) // 2, (w - 20) // 2
    crop = image[top : top + 20, left : left + 20]
    assert torch.equal(ds.images[0], torch.from_numpy(crop).permute(2, 0, 1))


def test_folder_images_are_resized_to_image_size(tmp_path):
    save(tmp_path / "a" / "big.png", np.full((64, 128, 3), (10, 200, 30), np.uint8))
    save(tmp_path / "a" / "small.png", np.full((8, 8, 3), (10, 200, 30), np.uint8))
    ds = load_dataset("folder", data_dir=tmp_path, image_size=16)
    assert ds.images.shape == (2, 3, 16, 16)
    assert (ds.images[:, :, :, :].int() - torch.tensor([10, 200, 30]).view(1, 3, 1, 1)).abs().max() <= 1


def test_folder_reads_jpeg_and_grey_when_asked(tmp_path):
    image = np.zeros((128, 128, 3), np.uint8)
    image[:64] = (250, 250, 250)  # light top half, dark bottom half
    save(tmp_path / "a" / "x.jpg", image, quality=95)
    grey = load_dataset("folder", data_dir=tmp_path, image_size=32, channels=1)
    assert grey.images.shape == (1, 1, 32, 32)
    assert grey.images[0, 0, :12].float().mean() > 240 and grey.images[0, 0, 20:].float().mean() < 15
    colour = load_dataset("folder", data_dir=tmp_path, image_size=32)
    assert colour.images.shape == (1, 3, 32, 32)


def test_folder_grey_matches_pil_luma(tmp_path):
    image = rgb(16, 16, 7)
    save(tmp_path / "a" / "x.png", image)
    ds = load_dataset("folder", data_dir=tmp_path, image_size=16, channels=1)
    expected = np.array(Image.fromarray(image).convert("L"))
    assert torch.equal(ds.images[0, 0], torch.from_numpy(expected))


def test_folder_of_only_images_is_unlabeled(tmp_path):
    save(tmp_path / "b.png", rgb(12, 12, 0))
    save(tmp_path / "a.png", rgb(12, 12, 1))
    ds = load_dataset("folder", data_dir=tmp_path, image_size=12)
    assert ds.labels is None and ds.classes == () and ds.ids == ("a.png", "b.png")


def test_folder_test_split_uses_the_train_class_list(tmp_path):
    for cls in ("ant", "bee", "cow"):
        save(tmp_path / "train" / cls / "0.png", rgb(8, 8, 0))
    save(tmp_path / "test" / "cow" / "0.png", rgb(8, 8, 1))
    test = load_dataset("folder", "test", data_dir=tmp_path, image_size=8)
    assert test.classes == ("ant", "bee", "cow")
    assert test.labels.tolist() == [2] and test.ids == ("cow/0.png",)
    assert len(load_dataset("folder", "train", data_dir=tmp_path, image_size=8)) == 3


def test_folder_test_class_unknown_to_train_is_refused(tmp_path):
    save(tmp_path / "train" / "ant" / "0.png", rgb(8, 8, 0))
    save(tmp_path / "test" / "yak" / "0.png", rgb(8, 8, 1))
    with pytest.raises(SimCLRv2Error, match="yak is a class that .*train does not have"):
        load_dataset("folder", "test", data_dir=tmp_path)


def test_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(SimCLRv2Error, match="image folder .*nowhere not found"):
        load_dataset("folder", data_dir=tmp_path / "nowhere")
    with pytest.raises(SimCLRv2Error, match="folder dataset reads the images under data.data_dir"):
        load_dataset("folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimCLRv2Error, match="empty is empty"):
        load_dataset("folder", data_dir=tmp_path / "empty")
    save(tmp_path / "one" / "cat" / "0.png", rgb(8, 8, 0))
    with pytest.raises(SimCLRv2Error, match="has no test/ folder"):
        load_dataset("folder", "test", data_dir=tmp_path / "one")
    (tmp_path / "one" / "dog").mkdir()
    (tmp_path / "one" / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(SimCLRv2Error, match="class folder .*dog holds no images"):
        load_dataset("folder", data_dir=tmp_path / "one")


def test_folder_corrupt_image_is_skipped_and_named(tmp_path, caplog):
    save(tmp_path / "cat" / "good.png", rgb(8, 8, 0))
    (tmp_path / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with caplog.at_level("INFO", logger="simclrv2"):
        ds = load_dataset("folder", data_dir=tmp_path)
    assert ds.ids == ("cat/good.png",)
    assert re.search(r"skipped 1 unreadable image \(cat/bad\.jpg", caplog.text)


def test_folder_image_beside_class_folders_is_refused(tmp_path):
    save(tmp_path / "cat" / "0.png", rgb(8, 8, 0))
    save(tmp_path / "stray.png", rgb(8, 8, 1))
    with pytest.raises(SimCLRv2Error, match="stray.png lies beside the class folders"):
        load_dataset("folder", data_dir=tmp_path)
