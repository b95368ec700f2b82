"""Fetching the official files: stream to a hidden temporary file beside the target, verify the checksum,
then rename (or extract) it into place, so a file under its final name is always complete and verified.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from simclrv2.atomic import publish, temporary_beside
from simclrv2.errors import SimCLRv2Error

TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One file to fetch and the md5 it must have."""

    url: str
    md5: str
    # md5 of the gunzipped bytes rather than of the .gz: a re-compressed copy of the same data (Debian's
    # Fashion-MNIST files have different gzip headers) still verifies.
    gunzipped: bool = False
    extract: bool = False  # a tar archive: unpacked into the destination, then deleted

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _idx(base: str, md5s: dict[str, str]) -> tuple[Resource, ...]:
    return tuple(Resource(f"{base}{stem}.gz", md5, gunzipped=True) for stem, md5 in md5s.items())


RESOURCES: dict[str, tuple[Resource, ...]] = {
    # md5 of the uncompressed IDX files; the Fashion-MNIST ones were checked against Debian's copy.
    "fashion-mnist": _idx("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    }),
    # The original yann.lecun.com host refuses downloads; this is the mirror PyTorch uses.
    "mnist": _idx("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }),
    "cifar10": (Resource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a", extract=True),),
    "cifar100": (Resource("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", extract=True),),
    "stl10": (Resource("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                       "91f7769df0f17e558f3565bffb0c7dfb", extract=True),),
}


def file_md5(path: Path, gunzipped: bool = False) -> str:
    """md5 of a file, or of its gunzipped content (a damaged gzip file raises OSError or EOFError)."""
    digest = hashlib.md5(usedforsecurity=False)
    with (gzip.open(path, "rb") if gunzipped else path.open("rb")) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _unreachable(resource: Resource, dest: Path, err: BaseException) -> SimCLRv2Error:
    what = f"extract it into {dest}" if resource.extract else f"put it in {dest}"
    return SimCLRv2Error(f"could not reach {resource.url} ({err}); without internet, download that file on "
                         f"another machine and {what}, or set SIMCLRV2_DATA to a folder holding the dataset")


def _stream(resource: Resource, dest: Path, out) -> None:
    try:
        response = urllib.request.urlopen(resource.url, timeout=TIMEOUT_S)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError and timeouts are OSErrors
        raise _unreachable(resource, dest, err) from err
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=resource.filename, disable=None) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _unreachable(resource, dest, err) from err
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))


def _safe_extractall(tar: tarfile.TarFile, staging: Path) -> None:
    """Extracts refusing absolute paths, ``..``, links and devices (an archive must not write elsewhere)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(staging, filter="data")
        return
    for member in tar.getmembers():  # Pythons before 3.10.12 / 3.11.4 have no extraction filters
        if not (member.isfile() or member.isdir()) or Path(member.name).is_absolute() \
                or ".." in Path(member.name).parts:
            raise SimCLRv2Error(f"refusing to extract {member.name!r}: the archive is not the official one")
    tar.extractall(staging)


def _extract(archive: Path, dest: Path, name: str) -> None:
    """Unpacks ``archive`` (downloaded as ``name``) into a hidden folder in ``dest``, then moves each
    top-level entry into place, so a half-extracted archive never looks like a dataset."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive) as tar:
                _safe_extractall(tar, staging)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise SimCLRv2Error(f"cannot extract {name} into {dest} ({err})") from err
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if target.exists():
                raise SimCLRv2Error(f"{target} is in the way of the downloaded files (an incomplete copy?); "
                                    "remove it and download again")
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(resource: Resource, dest: Path) -> Path:
    """Downloads one resource into ``dest`` and verifies it; returns the file (or ``dest`` for archives).

    Nothing appears under a final name unless it verified: the bytes go to a hidden ``.part`` file that is
    renamed (or extracted) only after the checksum matched, and removed on any failure.
    """
    final = dest / resource.filename
    with temporary_beside(final, suffix=".part") as part:
        with part.open("wb") as out:
            _stream(resource, dest, out)
        try:
            got = file_md5(part, resource.gunzipped)
        except (OSError, EOFError, zlib.error) as err:
            raise SimCLRv2Error(f"{resource.filename} from {resource.url} is not a complete gzip file "
                                f"({err}); the download was damaged, so it was removed: try again") from err
        if got != resource.md5:
            raise SimCLRv2Error(f"{resource.filename} from {resource.url} has md5 {got}, expected "
                                f"{resource.md5}; the download was damaged or the file changed, so it was "
                                "removed: try again")
        if resource.extract:
            _extract(part, dest, resource.filename)
            return dest
        publish(part, final)
        return final
