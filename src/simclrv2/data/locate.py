"""Where a dataset's files are: the explicit data_dir, then $SIMCLRV2_DATA, the cache, Debian's folder.

An explicit data_dir is never second-guessed: when it lacks a file the error names that file. Without one,
the first place holding the dataset's files wins, and when none does the error says how to get them.
"""

from __future__ import annotations

import os
from pathlib import Path

from simclrv2.data.dataset import DatasetSpec, file_candidates
from simclrv2.errors import SimCLRv2Error

ENV_VAR = "SIMCLRV2_DATA"
DEBIAN_ROOT = Path("/usr/share/datasets")  # where Debian's dataset-* packages install


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/simclrv2/<name>``, or ``~/.cache/simclrv2/<name>``: where downloads go."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "simclrv2" / name


def search_roots(name: str, spec: DatasetSpec) -> list[Path]:
    """The folders tried, in order, when no data_dir is given."""
    roots = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots += [Path(env).expanduser() / name, Path(env).expanduser()]
    roots.append(cache_dir(name))
    if spec.debian_dir:
        roots.append(DEBIAN_ROOT / spec.debian_dir)
    return roots


def missing_file(directory: Path, files: tuple[str, ...]) -> str | None:
    """The first of ``files`` absent from ``directory`` ("x[.gz]": either form counts), or None."""
    for name in files:
        if not any((directory / c).is_file() for c in file_candidates(name)):
            return name
    return None


def holding_dir(root: Path, spec: DatasetSpec, files: tuple[str, ...] | None = None) -> Path | None:
    """``root`` or the archive folder inside it (``cifar-10-batches-py``...) that holds ``files``."""
    files = spec.marker_files if files is None else files
    for directory in (root, *(root / sub for sub in spec.subdirs)):
        if directory.is_dir() and missing_file(directory, files) is None:
            return directory
    return None


def check_data_dir(data_dir: Path, spec: DatasetSpec) -> Path:
    """The folder holding the files under an explicit data_dir, or an error naming the missing file."""
    if not data_dir.is_dir():
        raise SimCLRv2Error(f"data_dir {data_dir} does not exist; fix data.data_dir or leave it empty to "
                            f"search ${ENV_VAR}, the cache and Debian's folder")
    found = holding_dir(data_dir, spec)
    if found is None:
        inside = f" (nor in a {'/ or '.join(spec.subdirs)}/ folder inside it)" if spec.subdirs else ""
        missing = missing_file(data_dir, spec.marker_files)
        raise SimCLRv2Error(f"data_dir {data_dir} has no {missing}{inside}; "
                            f"put the {spec.title} files ({', '.join(spec.all_files)}) there")
    return found


def search(name: str, spec: DatasetSpec) -> Path | None:
    """The first folder in the search order that holds the dataset, or None."""
    for root in search_roots(name, spec):
        found = holding_dir(root, spec)
        if found is not None:
            return found
    return None


def not_found_error(name: str, spec: DatasetSpec) -> SimCLRv2Error:
    """One line saying where we looked, which files we wanted, and every way to get them."""
    looked = ", ".join(str(p) for p in search_roots(name, spec))
    ways = []
    if spec.apt_package:
        ways.append(f"`sudo apt-get install {spec.apt_package}`")
    ways.append(f"`simclrv2 download {name}` (needs internet)")
    ways.append(f"put the files in a folder and set {ENV_VAR} to it (or set data.data_dir)")
    return SimCLRv2Error(f"{spec.title} not found (looked in {looked}; expected "
                         f"{', '.join(spec.all_files)}); get it with {', or '.join(ways)}")


def locate(name: str, spec: DatasetSpec, data_dir: str | Path | None = None) -> Path:
    """The folder holding the files of dataset ``name``, searched in the documented order."""
    if data_dir is not None:
        return check_data_dir(Path(data_dir).expanduser(), spec)
    found = search(name, spec)
    if found is None:
        raise not_found_error(name, spec)
    return found
