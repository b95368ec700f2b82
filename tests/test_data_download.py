"""Downloads without a network: file:// URLs and a stubbed opener stand in for the servers."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from simclrv2.data import download as download_module
from simclrv2.data import download_dataset, load_dataset
from simclrv2.data import locate as locate_module
from simclrv2.data.download import Resource, fetch
from simclrv2.errors import SimCLRv2Error


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fashion_sources(folder, n_train: int = 4, n_test: int = 2) -> tuple[Resource, ...]:
    """The four gzipped IDX files under ``folder``, as resources with md5s of their uncompressed bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    resources = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            raw = idx_bytes((np.arange(np.prod(shape)) % 10).astype(np.uint8).reshape(shape))
            path = folder / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(raw))
            resources.append(Resource(path.as_uri(), hashlib.md5(raw).hexdigest(), gunzipped=True))
    return tuple(resources)


def visible_and_hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMCLRV2_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(locate_module, "DEBIAN_ROOT", tmp_path / "debian")
    return tmp_path


def test_fetch_verifies_and_renames_into_place(tmp_path):
    source = tmp_path / "server" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(b"payload" * 1000)
    resource = Resource(source.as_uri(), hashlib.md5(source.read_bytes()).hexdigest())
    path = fetch(resource, tmp_path / "dest")
    assert path == tmp_path / "dest" / "file.bin" and path.read_bytes() == source.read_bytes()
    assert visible_and_hidden(tmp_path / "dest") == ["file.bin"]  # no .part file left behind


def test_checksum_of_gzipped_files_is_over_the_uncompressed_bytes(tmp_path):
    resource = fashion_sources(tmp_path / "server")[0]
    recompressed = tmp_path / "other" / resource.filename  # same data, different gzip header (like Debian's)
    recompressed.parent.mkdir()
    recompressed.write_bytes(gzip.compress(gzip.decompress((tmp_path / "server" / resource.filename)
                                                           .read_bytes()), mtime=12345))
    assert fetch(Resource(recompressed.as_uri(), resource.md5, gunzipped=True), tmp_path / "d").is_file()


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path):
    source = tmp_path / "file.bin"
    source.write_bytes(b"tampered")
    resource = Resource(source.as_uri(), "0" * 32)
    got = hashlib.md5(b"tampered").hexdigest()
    with pytest.raises(SimCLRv2Error, match=f"file.bin from .* has md5 {got}, expected {'0' * 32}.*removed"):
        fetch(resource, tmp_path / "dest")
    assert visible_and_hidden(tmp_path / "dest") == []


def test_gzip_that_does_not_decompress_is_refused_and_removed(tmp_path):
    source = tmp_path / "train-images-idx3-ubyte.gz"
    source.write_bytes(gzip.compress(b"x" * 1000)[:-20])
    with pytest.raises(SimCLRv2Error, match="train-images-idx3-ubyte.gz from .* is not a complete gzip file"):
        fetch(Resource(source.as_uri(), "0" * 32, gunzipped=True), tmp_path / "dest")
    assert visible_and_hidden(tmp_path / "dest") == []


def test_unreachable_url_says_how_to_place_the_file_by_hand(tmp_path):
    resource = Resource((tmp_path / "gone.gz").as_uri(), "0" * 32)
    dest = tmp_path / "dest"
    with pytest.raises(SimCLRv2Error, match=f"could not reach {resource.url} .*put it in {dest}"):
        fetch(resource, tmp_path / "dest")
    assert visible_and_hidden(tmp_path / "dest") == []


def test_offline_is_reported_as_unreachable(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    resource = Resource("https://example.invalid/cifar-10-python.tar.gz", "0" * 32, extract=True)
    with pytest.raises(SimCLRv2Error, match="could not reach https://example.invalid/cifar-10-python.tar.gz "
                                            ".*name resolution.*extract it into"):
        fetch(resource, tmp_path / "dest")


class _BreaksMidway(io.BytesIO):
    headers = {"Content-Length": "100"}

    def read(self, size=-1):
        if self.tell() >= 10:
            raise ConnectionResetError("connection reset by peer")
        return super().read(10)


def test_connection_lost_midway_leaves_no_half_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _BreaksMidway(b"x" * 100))
    resource = Resource("http://example.invalid/train-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(SimCLRv2Error, match="could not reach .*connection reset"):
        fetch(resource, tmp_path / "dest")
    assert visible_and_hidden(tmp_path / "dest") == []


def test_load_dataset_downloads_into_the_cache_when_asked(places, monkeypatch):
    monkeypatch.setitem(download_module.RESOURCES, "fashion-mnist", fashion_sources(places / "server"))
    with pytest.raises(SimCLRv2Error, match="Fashion-MNIST not found"):
        load_dataset("fashion-mnist")
    ds = load_dataset("fashion-mnist", download=True)
    assert len(ds) == 4 and ds.images.shape == (4, 1, 28, 28)
    cache = places / "cache" / "simclrv2" / "fashion-mnist"
    assert len(list(cache.glob("*-ubyte.gz"))) == 4 and not list(cache.glob(".*"))
    for path in (places / "server").iterdir():  # the server goes away: nothing is fetched again
        path.unlink()
    assert download_dataset("fashion-mnist") == cache
    assert len(load_dataset("fashion-mnist", "test")) == 2


def test_download_with_explicit_data_dir_goes_there(places, monkeypatch):
    monkeypatch.setitem(download_module.RESOURCES, "fashion-mnist", fashion_sources(places / "server"))
    ds = load_dataset("fashion-mnist", data_dir=places / "mine", download=True)
    assert len(ds) == 4 and (places / "mine" / "train-images-idx3-ubyte.gz").is_file()


def write_cifar10_folder(folder, n: int = 2) -> None:
    folder.mkdir(parents=True)
    data = np.zeros((n, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": [1] * n}, protocol=2))
    names = [f"c{k}".encode() for k in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))


def make_archive(path, source_dir, arcname: str) -> Resource:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source_dir, arcname=arcname)
    return Resource(path.as_uri(), hashlib.md5(path.read_bytes()).hexdigest(), extract=True)


def test_archive_is_extracted_into_place_and_removed(places, monkeypatch):
    write_cifar10_folder(places / "build" / "cifar-10-batches-py")
    resource = make_archive(places / "cifar-10-python.tar.gz", places / "build" / "cifar-10-batches-py",
                            "cifar-10-batches-py")
    monkeypatch.setitem(download_module.RESOURCES, "cifar10", (resource,))
    dest = places / "dl"
    assert download_dataset("cifar10", dest) == dest / "cifar-10-batches-py"
    assert visible_and_hidden(dest) == ["cifar-10-batches-py"]  # archive and staging folder removed
    ds = load_dataset("cifar10", "test", data_dir=dest)
    assert len(ds) == 2 and ds.labels.tolist() == [1, 1] and ds.classes[0] == "c0"


def test_archive_escaping_its_folder_is_refused(places):
    evil = places / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    resource = Resource(evil.as_uri(), hashlib.md5(evil.read_bytes()).hexdigest(), extract=True)
    with pytest.raises(SimCLRv2Error, match="cannot extract evil.tar.gz"):
        fetch(resource, places / "dest")
    assert not (places / "escaped.txt").exists() and visible_and_hidden(places / "dest") == []


def test_extracting_over_an_existing_folder_is_refused(places):
    write_cifar10_folder(places / "build" / "cifar-10-batches-py")
    resource = make_archive(places / "a.tar.gz", places / "build" / "cifar-10-batches-py",
                            "cifar-10-batches-py")
    (places / "dest" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(SimCLRv2Error, match="cifar-10-batches-py is in the way"):
        fetch(resource, places / "dest")
    assert visible_and_hidden(places / "dest") == ["cifar-10-batches-py"]


def test_datasets_without_a_download_say_so():
    with pytest.raises(SimCLRv2Error, match="folder cannot be downloaded; downloadable: fashion-mnist, "
                                            "mnist, cifar10, cifar100, stl10"):
        download_dataset("folder")


def test_every_download_has_an_md5_and_a_known_dataset():
    for name, resources in download_module.RESOURCES.items():
        assert name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "stl10")
        for r in resources:
            assert len(r.md5) == 32 and int(r.md5, 16) >= 0 and r.url.startswith(("http://", "https://"))
