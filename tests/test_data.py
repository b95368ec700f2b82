"""ImageDataset, load_dataset's options, where data is looked for, and the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from simclrv2.data import DATASETS, ImageDataset, find_data_dir, load_dataset
from simclrv2.data import locate as locate_module
from simclrv2.data.dataset import convert_channels, index_ids
from simclrv2.data.download import RESOURCES, file_md5
from simclrv2.data.idx import FASHION_MNIST_CLASSES
from simclrv2.errors import SimCLRv2Error


def tiny(n: int = 6, labelled: bool = True) -> ImageDataset:
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, 4, 4)
    return ImageDataset(images=images, labels=torch.arange(n) % 3 if labelled else None,
                        classes=("a", "b", "c") if labelled else (), ids=index_ids(n), name="tiny/train")


# ------------------------------------------------------------------------------------- ImageDataset


def test_dataset_properties():
    ds = tiny()
    assert (len(ds), ds.num_classes, ds.channels, ds.image_size) == (6, 3, 3, 4)
    assert repr(ds) == "ImageDataset('tiny/train', 6 images, 3x4px, 3 classes)"


def test_subset_keeps_images_labels_and_ids_together():
    ds = tiny()
    for index in ([4, 1], torch.tensor([4, 1])):
        sub = ds.subset(index)
        assert torch.equal(sub.images, ds.images[[4, 1]]) and sub.images.is_contiguous()
        assert sub.labels.tolist() == [1, 1] and sub.ids == ("00004", "00001")
        assert sub.classes == ds.classes and sub.name == ds.name
    mask = torch.tensor([True, False, False, True, False, False])
    assert tiny().subset(mask).ids == ("00000", "00003")
    assert tiny(labelled=False).subset([2]).labels is None
    assert len(ds.subset([])) == 0


def test_subset_out_of_range_is_an_error():
    with pytest.raises(SimCLRv2Error, match="index 6 is out of range for tiny/train"):
        tiny().subset([0, 6])
    with pytest.raises(SimCLRv2Error, match="index -1 is out of range"):
        tiny().subset([-1])


def test_require_labels_names_the_purpose():
    assert tiny().require_labels("fine-tuning").tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(SimCLRv2Error, match="the kNN monitor needs labelled images, but tiny/train is "
                                            "unlabeled"):
        tiny(labelled=False).require_labels("the kNN monitor")


def test_dataset_rejects_inconsistent_fields():
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(SimCLRv2Error, match="contiguous uint8"):
        ImageDataset(images.float(), None, (), ("0", "1"), "x")
    with pytest.raises(SimCLRv2Error, match="contiguous uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), None, (), ("0", "1"), "x")
    with pytest.raises(SimCLRv2Error, match="labels must be an int64"):
        ImageDataset(images, torch.zeros(3, dtype=torch.int64), (), ("0", "1"), "x")
    with pytest.raises(SimCLRv2Error, match="1 ids for 2 images"):
        ImageDataset(images, None, (), ("0",), "x")


def test_ids_are_zero_padded_to_at_least_five_digits():
    assert index_ids(3) == ("00000", "00001", "00002")
    assert index_ids(100_001)[-1] == "100000"


def test_convert_channels_matches_a_per_pixel_luma():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8, generator=generator)
    grey = convert_channels(images, 1)
    r, g, b = (images[:, c].double() for c in range(3))
    assert torch.equal(grey[:, 0], (0.299 * r + 0.587 * g + 0.114 * b).round().to(torch.uint8))
    back = convert_channels(grey, 3)
    assert back.shape == (3, 3, 5, 5) and back.is_contiguous() and torch.equal(back[:, 2], grey[:, 0])



def test_a_classifier_needs_two_classes():
    assert tiny().require_classes("finetune").tolist() == [0, 1, 2, 0, 1, 2]
    one_class = tiny().subset([0, 3])  # both images are of class "a"
    with pytest.raises(SimCLRv2Error, match="finetune trains a classifier.*tiny/train has only class 'a'"):
        one_class.require_classes("finetune")
    with pytest.raises(SimCLRv2Error, match="supervised needs labelled images"):
        tiny(labelled=False).require_classes("supervised")

# --------------------------------------------------------------------------------------- load_dataset


def write_fashion(folder, n_train: int, n_test: int = 2) -> None:
    """The four IDX files (gzipped) with ``n_train`` training images, so tests can tell folders apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            arr = (np.arange(np.prod(shape)) % 10).astype(np.uint8).reshape(shape)
            data = bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + arr.tobytes()
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(data))


def test_dataset_names_and_splits():
    assert list(DATASETS) == ["fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "folder"]
    assert DATASETS["stl10"].splits == ("train", "test", "unlabeled", "train+unlabeled")
    with pytest.raises(SimCLRv2Error, match="unknown dataset 'imagenet'; choose one of: fashion-mnist, "
                                            "mnist, cifar10, cifar100, stl10, folder"):
        load_dataset("imagenet")
    with pytest.raises(SimCLRv2Error, match="stl10 has no split 'val'; choose one of: train, test, "
                                            r"unlabeled, train\+unlabeled"):
        load_dataset("stl10", "val")
    with pytest.raises(SimCLRv2Error, match="fashion-mnist has no split 'unlabeled'; choose one of: "
                                            "train, test"):
        load_dataset("fashion-mnist", "unlabeled")


def test_image_size_and_channels_apply_to_array_datasets(tmp_path):
    write_fashion(tmp_path, 3)
    native = load_dataset("fashion-mnist", data_dir=tmp_path)
    big = load_dataset("fashion-mnist", data_dir=tmp_path, image_size=32, channels=3)
    assert big.images.shape == (3, 3, 32, 32) and big.images.dtype == torch.uint8
    assert torch.equal(big.images[:, 0], big.images[:, 1]) and big.ids == native.ids
    assert torch.equal(load_dataset("fashion-mnist", data_dir=tmp_path, image_size=28).images, native.images)
    with pytest.raises(SimCLRv2Error, match="channels must be 1 or 3"):
        load_dataset("fashion-mnist", data_dir=tmp_path, channels=2)
    with pytest.raises(SimCLRv2Error, match="image_size must be >= 1"):
        load_dataset("fashion-mnist", data_dir=tmp_path, image_size=0)


def test_limit_keeps_the_first_images_and_resizes_only_those(tmp_path, monkeypatch):
    import simclrv2.data as data_module

    write_fashion(tmp_path, 5)
    native = load_dataset("fashion-mnist", data_dir=tmp_path)
    resized_counts = []
    real_resize = data_module.resize_images
    monkeypatch.setattr(data_module, "resize_images",
                        lambda images, size: resized_counts.append(len(images)) or real_resize(images, size))
    first = load_dataset("fashion-mnist", data_dir=tmp_path, image_size=32, limit=2)
    assert resized_counts == [2] and first.images.shape == (2, 1, 32, 32)
    assert first.ids == native.ids[:2] and torch.equal(first.labels, native.labels[:2])
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path, limit=50)) == 5  # a limit above the size: all
    with pytest.raises(SimCLRv2Error, match="limit must be >= 0"):
        load_dataset("fashion-mnist", data_dir=tmp_path, limit=-1)


# ------------------------------------------------------------------------------------ finding the data


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A machine with nothing installed: no SIMCLRV2_DATA, an empty cache, an empty Debian folder."""
    monkeypatch.delenv("SIMCLRV2_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(locate_module, "DEBIAN_ROOT", tmp_path / "debian")
    return tmp_path


def test_search_order_env_name_env_cache_debian(places, monkeypatch):
    write_fashion(places / "debian" / "fashion-mnist", 3)
    assert len(load_dataset("fashion-mnist")) == 3
    write_fashion(places / "home" / ".cache" / "simclrv2" / "fashion-mnist", 4)
    assert len(load_dataset("fashion-mnist")) == 4
    monkeypatch.setenv("XDG_CACHE_HOME", str(places / "xdg"))
    assert len(load_dataset("fashion-mnist")) == 3  # XDG_CACHE_HOME replaces ~/.cache
    write_fashion(places / "xdg" / "simclrv2" / "fashion-mnist", 5)
    assert len(load_dataset("fashion-mnist")) == 5
    monkeypatch.setenv("SIMCLRV2_DATA", str(places / "env"))
    write_fashion(places / "env", 6)
    assert len(load_dataset("fashion-mnist")) == 6
    write_fashion(places / "env" / "fashion-mnist", 7)
    assert len(load_dataset("fashion-mnist")) == 7
    write_fashion(places / "explicit", 8)
    assert len(load_dataset("fashion-mnist", data_dir=places / "explicit")) == 8
    assert find_data_dir("fashion-mnist") == places / "env" / "fashion-mnist"


def test_search_skips_folders_without_the_files(places, monkeypatch):
    monkeypatch.setenv("SIMCLRV2_DATA", str(places / "env"))
    (places / "env" / "fashion-mnist").mkdir(parents=True)  # exists, but empty
    write_fashion(places / "debian" / "fashion-mnist", 3)
    assert find_data_dir("fashion-mnist") == places / "debian" / "fashion-mnist"


def test_not_found_says_how_to_get_fashion_mnist(places):
    with pytest.raises(SimCLRv2Error) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    for part in ("Fashion-MNIST not found", "sudo apt-get install dataset-fashion-mnist",
                 "simclrv2 download fashion-mnist", "SIMCLRV2_DATA", "train-images-idx3-ubyte[.gz]",
                 "t10k-labels-idx1-ubyte[.gz]", str(places / "debian" / "fashion-mnist")):
        assert part in message


def test_not_found_for_cifar_offers_download_but_no_apt(places):
    with pytest.raises(SimCLRv2Error, match="CIFAR-10 not found") as info:
        find_data_dir("cifar10")
    assert "apt-get" not in str(info.value) and "simclrv2 download cifar10" in str(info.value)


def test_explicit_data_dir_without_the_files_is_an_error_not_a_fallback(places):
    write_fashion(places / "debian" / "fashion-mnist", 3)
    write_fashion(places / "partial", 3)
    (places / "partial" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SimCLRv2Error, match=r"data_dir .*partial has no train-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("fashion-mnist", data_dir=places / "partial")
    with pytest.raises(SimCLRv2Error, match="data_dir .*missing does not exist"):
        load_dataset("fashion-mnist", data_dir=places / "missing")


def test_explicit_data_dir_missing_a_split_file_names_it(places):
    write_fashion(places / "d", 3)
    (places / "d" / "t10k-images-idx3-ubyte.gz").unlink()
    assert len(load_dataset("fashion-mnist", "train", data_dir=places / "d")) == 3
    with pytest.raises(SimCLRv2Error, match=r"has no t10k-images-idx3-ubyte\[\.gz\] \(needed for the "
                                            "fashion-mnist test split\\)"):
        load_dataset("fashion-mnist", "test", data_dir=places / "d")


def test_data_dir_accepts_a_tilde(places):
    write_fashion(places / "home" / "data", 3)
    assert len(load_dataset("fashion-mnist", data_dir="~/data")) == 3


# ---------------------------------------------------------------------------- the real Fashion-MNIST

_DEBIAN_FASHION = locate_module.DEBIAN_ROOT / DATASETS["fashion-mnist"].debian_dir


@pytest.mark.data
@pytest.mark.skipif(not (_DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_location(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMCLRV2_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: the Debian folder must be found
    assert find_data_dir("fashion-mnist") == _DEBIAN_FASHION
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert train.classes == FASHION_MNIST_CLASSES and train.ids[-1] == "59999"
    assert 60 < train.images.float().mean() < 80  # Fashion-MNIST's mean pixel is about 72.9
    # The download checksums (of the uncompressed files) agree with Debian's copy.
    for resource in RESOURCES["fashion-mnist"]:
        assert file_md5(_DEBIAN_FASHION / resource.filename, gunzipped=True) == resource.md5
