"""Atomic file writes: the content goes to a hidden temporary file beside the target, which is renamed onto it
only once complete, so a reader never sees a half-written file and an interrupted write leaves nothing behind.

Every file the package writes for later reading (checkpoints, results, label subsets, downloads, the file-index
cache, the report) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_beside(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A new empty hidden file in ``path``'s folder (created if needed), removed on leaving unless
    :func:`publish` renamed it onto its target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path, replace: bool = True) -> None:
    """Puts the finished ``tmp`` in place as ``path`` in one step (same file system), readable by everyone.

    ``replace=False`` never overwrites another writer's file: FileExistsError when ``path`` exists.
    """
    os.chmod(tmp, 0o644)  # mkstemp makes files private; runs, data and subset lists are meant to be shared
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the file appeared meanwhile
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links: the caller's existence check is the best we can do
        os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; it becomes ``path`` when the block ends without error."""
    with temporary_beside(path, suffix) as tmp:
        yield tmp
        publish(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
