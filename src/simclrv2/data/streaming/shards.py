"""WebDataset shards: ``simclrv2 prepare`` writes an image folder into them, and a random-access reader streams
them through the same decode-time crops and step sampler as a folder.

A shard is a plain POSIX tar of ``<key>.<ext>`` members (the original image bytes, not re-encoded) and
``<key>.cls`` (the label, for labelled folders), written with ``webdataset.ShardWriter``. The reader needs no
webdataset install: it lists each shard's member offsets once with ``tarfile`` (cached like a folder's file
list) and reads a sample with one ``pread``. Reading by sample index is what keeps the engine's guarantees on
shards: one seeded permutation per epoch, identical on every node and split into disjoint per-process parts,
and mid-epoch resume from the step number in the checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from simclrv2.data.streaming.index import cached_arrays, folder_index, image_extensions, pack_strings
from simclrv2.errors import SimCLRv2Error
from simclrv2.logs import get_logger

SHARD_PATTERN = "shard-%06d.tar"
METADATA = "dataset.json"


def prepare_shards(folder: str | Path, out: str | Path, shard_size: int = 10_000, split: str = "train") -> Path:
    """Writes the images of ``folder`` (its ``split``) into WebDataset shards of ``shard_size`` samples in
    ``out``, in the folder's sorted order, with ``dataset.json`` (count, classes); returns ``out``."""
    try:
        import webdataset
    except ImportError as err:
        raise SimCLRv2Error("writing shards needs webdataset: pip install 'simclrv2[shards]'") from err
    if shard_size < 1:
        raise SimCLRv2Error(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out).expanduser()
    source = Path(folder).expanduser().resolve()
    if out.resolve().is_relative_to(source):  # shards and dataset.json must not land among the user's images
        raise SimCLRv2Error(f"the output {out} is inside the image folder {folder}; choose a folder outside it")
    index = folder_index(folder, split)
    if out.is_dir() and any(out.glob("*.tar")):
        raise SimCLRv2Error(f"{out} already holds shards; choose an empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SimCLRv2Error(f"cannot create {out} ({err.strerror or err}); choose another output folder") from err
    with webdataset.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0) as sink:
        for i in range(len(index)):
            path = index.path(i)
            ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
            sample = {"__key__": f"{i:09d}", ext: path.read_bytes()}
            if index.labels is not None:
                sample["cls"] = int(index.labels[i])
            sink.write(sample)
    metadata = {"format": "webdataset", "images": len(index), "classes": list(index.classes),
                "shard_size": shard_size}
    (out / METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
    get_logger().info(f"wrote {len(index)} images from {index.root} into {len(list(out.glob('*.tar')))} shards "
                      f"in {out}")
    return out


def _scan_shards(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise SimCLRv2Error(f"{folder} holds no .tar shards; write them with `simclrv2 prepare IMAGES {folder}`")
    extensions = {ext.lstrip(".") for ext in image_extensions()}
    keys, shard_of, offsets, sizes, labels = [], [], [], [], {}
    for s, shard in enumerate(shards):
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if ext.lower() in extensions:
                        keys.append(f"{s}/{key}")
                        shard_of.append(s)
                        offsets.append(member.offset_data)
                        sizes.append(member.size)
                    elif ext == "cls":
                        labels[f"{s}/{key}"] = int(tar.extractfile(member).read())
        except (OSError, tarfile.TarError, ValueError) as err:
            raise SimCLRv2Error(f"cannot read shard {shard} ({err}); write it again") from err
    if not keys:
        raise SimCLRv2Error(f"the shards in {folder} hold no images")
    buffer, key_offsets = pack_strings(keys)
    arrays = {"shards": np.asarray([p.name for p in shards], dtype=str), "shard_of": np.asarray(shard_of, np.int32),
              "offset": np.asarray(offsets, np.int64), "size": np.asarray(sizes, np.int64),
              "keys": buffer, "key_offsets": key_offsets}
    if labels and all(k in labels for k in keys):
        arrays["labels"] = np.asarray([labels[k] for k in keys], dtype=np.int64)
    return arrays, ["."]


@dataclass(eq=False)
class ShardIndex:
    """Every image of a folder of WebDataset shards, addressable by position (the shards' order)."""

    root: Path
    shards: tuple[str, ...]
    shard_of: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    keys: np.ndarray
    key_offsets: np.ndarray
    labels: np.ndarray | None
    classes: tuple[str, ...]
    _files: dict[int, int] = field(default_factory=dict, repr=False)  # shard -> descriptor, per process

    def __len__(self) -> int:
        return len(self.offset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # descriptors do not travel to spawned workers

    def id(self, i: int) -> str:
        return bytes(self.keys[self.key_offsets[i]:self.key_offsets[i + 1]]).decode().split("/", 1)[1]

    def name(self, i: int) -> str:
        return f"{self.root / self.shards[self.shard_of[i]]}:{self.id(i)}"

    def read(self, i: int) -> bytes:
        s = int(self.shard_of[i])
        fd = self._files.get(s)
        if fd is None:
            fd = self._files[s] = os.open(self.root / self.shards[s], os.O_RDONLY)
        return os.pread(fd, int(self.size[i]), int(self.offset[i]))

    def open(self, i: int) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self.read(i)))
        except (OSError, ValueError) as err:
            raise SimCLRv2Error(f"cannot read image {self.name(i)} ({err}); write the shards again") from err


def shard_index(folder: str | Path, cache: Path | None = None) -> ShardIndex:
    """The index of the shards in ``folder``, from the cache while the folder is unchanged."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SimCLRv2Error(f"shard folder {root} not found; set data.data_dir to the output of simclrv2 prepare")
    arrays = cached_arrays("shards", root, lambda: _scan_shards(root.resolve()), cache)
    labels = arrays.get("labels")
    classes: tuple[str, ...] = ()
    if (root / METADATA).is_file():
        classes = tuple(json.loads((root / METADATA).read_text()).get("classes", ()))
    if labels is not None and not classes:
        classes = tuple(str(k) for k in range(int(labels.max()) + 1))
    return ShardIndex(root, tuple(str(s) for s in arrays["shards"]), arrays["shard_of"], arrays["offset"],
                      arrays["size"], arrays["keys"], arrays["key_offsets"], labels, classes)
