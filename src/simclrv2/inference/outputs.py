"""Where ``predict``, ``embed`` and ``export`` write: the ``--output`` folder or file, created on demand, with
one line (not a traceback) when the file system refuses it."""

from __future__ import annotations

import os
from pathlib import Path

from simclrv2.errors import SimCLRv2Error


def output_folder(path: Path, what: str = "") -> Path:
    """``path`` as a folder the caller can write into, created with its parents if needed; ``what`` names it in
    messages (default: ``--output PATH``)."""
    what = what or f"--output {path}"
    if path.exists() and not path.is_dir():
        raise SimCLRv2Error(f"cannot create {what}: {path} is a file; choose another place")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SimCLRv2Error(f"cannot create {what} ({err.strerror or err}); choose another place") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise SimCLRv2Error(f"cannot write into {what} (permission denied); choose another place")
    return path


def output_file(path: Path) -> Path:
    """``path`` as a file the caller can write: not a folder, its folder created if needed."""
    if path.is_dir():
        raise SimCLRv2Error(f"--output {path} is a folder; name a file")
    output_folder(path.parent, f"the folder of --output {path}")
    return path
