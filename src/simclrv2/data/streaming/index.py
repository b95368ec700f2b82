"""The file list of an image folder, built once and cached, so a run over a million files starts in seconds.

The list is kept as one byte buffer of relative paths plus offsets (not a Python list of strings), so DataLoader
workers forked from the training process share it without copying it page by page. The cache is keyed by the
folder's path and checked against the modification times of every directory listed: adding, removing or
renaming a file changes its directory's time and rebuilds the list. A file rewritten in place under the same
name is not noticed (its pixels are read at each step anyway).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from simclrv2.atomic import atomic_path
from simclrv2.data.folder import split_folder
from simclrv2.data.guard import check_read
from simclrv2.data.locate import cache_dir
from simclrv2.errors import SimCLRv2Error, UnknownClassError
from simclrv2.logs import get_logger

INDEX_VERSION = 1


def image_extensions() -> frozenset[str]:
    """The suffixes PIL can open (the same set the in-memory folder reader accepts), lower case."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def pack_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one uint8 buffer and (n + 1,) int64 offsets."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


@dataclass(frozen=True, eq=False)
class FileIndex:
    """The images of one split folder in the in-memory reader's order: class folders by name, then files."""

    root: Path  # the split folder the paths are relative to
    buffer: np.ndarray  # uint8: every relative path, UTF-8, back to back
    offsets: np.ndarray  # (n + 1,) int64 into ``buffer``
    labels: np.ndarray | None  # (n,) int64, or None for a flat folder of unlabeled images
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def relative(self, i: int) -> str:
        return bytes(self.buffer[self.offsets[i]:self.offsets[i + 1]]).decode()

    def path(self, i: int) -> Path:
        return self.root / self.relative(i)

    def open(self, i: int) -> Image.Image:
        path = self.path(i)
        try:
            return Image.open(path)
        except (OSError, ValueError) as err:
            raise SimCLRv2Error(f"cannot read image {path} ({err}); remove or replace the file") from err

    def name(self, i: int) -> str:
        return str(self.path(i))

    def id(self, i: int) -> str:
        return self.relative(i)  # the in-memory reader's id of the image


def with_classes(index: FileIndex, classes: tuple[str, ...]) -> FileIndex:
    """``index`` labelled by ``classes`` (the training classes), matched by folder name: a test split that lacks a
    class, or lists its classes otherwise, still means by label k the k-th training class. A class unknown to
    training is refused (no prediction could be right). An unlabeled index, or no ``classes``, is kept as it is."""
    if index.labels is None or not classes or index.classes == tuple(classes):
        return index
    unknown = [name for name in index.classes if name not in classes]
    if unknown:
        raise UnknownClassError.of_folder(index.root / unknown[0])
    renumber = np.asarray([classes.index(name) for name in index.classes], dtype=np.int64)
    return dataclasses.replace(index, labels=renumber[index.labels], classes=tuple(classes))


def _scan(folder: Path, prefix: str, extensions: frozenset[str], recursive: bool, dirs: list[str]) -> list[str]:
    """Relative paths (``prefix`` + name, "/"-separated) of the visible image files under ``folder``; every
    directory visited is appended to ``dirs``. Plain string joins: a Path per file made listing 600,000 files
    take a minute."""
    dirs.append(prefix.rstrip("/") or ".")
    found: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir():
                if recursive:
                    found += _scan(Path(entry.path), f"{prefix}{name}/", extensions, True, dirs)
            elif os.path.splitext(name)[1].lower() in extensions:
                found.append(prefix + name)
    return found


def _build(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    extensions = image_extensions()
    dirs: list[str] = []
    with os.scandir(folder) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    loose = _scan(folder, "", extensions, False, dirs)
    if not classes:
        if not loose:
            raise SimCLRv2Error(f"{folder} is empty: expected one sub-folder of images per class, or image files")
        paths, labels = loose, None
    else:
        if loose:
            raise SimCLRv2Error(f"{folder / loose[0]} lies beside the class folders of {folder}; move it into its "
                                "class folder (a labelled folder holds only class sub-folders)")
        paths, label_list = [], []
        for k, name in enumerate(classes):
            files = _scan(folder / name, f"{name}/", extensions, True, dirs)
            if not files:
                raise SimCLRv2Error(f"class folder {folder / name} holds no images; add images or remove the folder")
            paths += files
            label_list += [k] * len(files)
        labels = np.asarray(label_list, dtype=np.int64)
    paths.sort(key=lambda p: p.split("/"))  # Path order: part by part, as the in-memory reader sorts
    buffer, offsets = pack_strings(paths)
    arrays = {"buffer": buffer, "offsets": offsets, "classes": np.asarray(classes, dtype=str)}
    if labels is not None:
        arrays["labels"] = labels
    return arrays, dirs


def _mtimes(base: Path, dirs: list[str]) -> np.ndarray:
    return np.asarray([os.stat(base / d).st_mtime_ns for d in dirs], dtype=np.int64)


def cached_arrays(kind: str, folder: Path, build: Callable[[], tuple[dict[str, np.ndarray], list[str]]],
                  cache: Path | None = None) -> dict[str, np.ndarray]:
    """``build()``'s arrays, from the cache when every directory it listed still has the same mtime."""
    folder = folder.resolve()
    key = hashlib.sha1(f"{kind}:{INDEX_VERSION}:{folder}".encode()).hexdigest()[:20]
    path = (cache or cache_dir("index")) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = dict(stored)
            dirs = [str(d) for d in arrays.pop("dirs")]
            if np.array_equal(_mtimes(folder, dirs), arrays.pop("mtimes")):
                return arrays
        except (OSError, ValueError, KeyError):
            pass  # a missing directory or a damaged cache: rebuild
    get_logger().info(f"indexing {folder} (cached in {path})")
    arrays, dirs = build()
    stored = {**arrays, "dirs": np.asarray(dirs, dtype=str), "mtimes": _mtimes(folder, dirs)}
    try:
        with atomic_path(path, suffix=".npz") as partial:  # np.savez adds .npz to a name without it
            np.savez(partial, **stored)
    except OSError as err:
        get_logger().warning(f"warning: cannot cache the file index in {path} ({err}); it is rebuilt next run")
    return arrays


def folder_index(root: str | Path, split: str = "train", cache: Path | None = None) -> FileIndex:
    """The file index of ``root``'s ``split`` (``root/train``, or ``root`` itself), from the cache when valid."""
    check_read("folder", split)  # as load_dataset does: a stage's test split is not streamed
    folder = split_folder(Path(root).expanduser(), split)
    arrays = cached_arrays("folder", folder, lambda: _build(folder.resolve()), cache)
    labels = arrays.get("labels")
    return FileIndex(folder, arrays["buffer"], arrays["offsets"], labels,
                     tuple(str(c) for c in arrays["classes"]))
