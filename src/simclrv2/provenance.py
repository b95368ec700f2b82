"""What produced a run: code version, libraries, hardware, precision and command line, as plain JSON data.

Stored beside a run's results and in its checkpoints, so a number can be traced back to the code and the
machine that made it. Every field is cheap to collect, and a missing tool (no git, no /proc) gives None,
never an error. The host name is left out on purpose: run directories get shared.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclrv2.runtime import bf16_is_fast, resolve_precision

PACKAGE = "simclrv2"
_SOURCE = Path(__file__).resolve().parent  # the package's own files, wherever they were imported from
_GIT_TIMEOUT_S = 5


def package_version() -> str | None:
    """The installed distribution's version, or None when the sources are used without installing."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung on a network file system
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit of the package's source and whether it has uncommitted changes, or Nones.

    Only when git tracks this very file: an installed copy inside some other repository (a virtual
    environment in a project folder) would otherwise report that project's commit."""
    if _git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return {"git_commit": None, "git_dirty": None}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back below
    return platform.processor() or platform.machine()


# CPU features that decide how fast a step can be: bf16 matrix units (AMX), bf16 vector dot products, AVX-512
BF16_RELEVANT_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's name, which of ``BF16_RELEVANT_FLAGS`` it reports (Linux), and ``ONEDNN_MAX_CPU_ISA`` and
    ``MKL_ENABLE_INSTRUCTIONS`` when set, since they cap oneDNN's and MKL's kernels below what the CPU has (how
    the AVX-512-BF16 and AVX2 paths are timed on an AMX CPU)."""
    flags: set[str] = set()
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass  # not Linux: no flags
    return {"cpu_model": cpu_model(), "cpu_flags": [f for f in BF16_RELEVANT_FLAGS if f in flags],
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS")}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_model()
    return device.type  # mps and others have no cheap model name


def command_line() -> list[str]:
    """sys.argv with the program reduced to its file name: its full path names the user's home."""
    if not sys.argv:
        return []
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


def provenance(device: torch.device | str, precision: str) -> dict[str, Any]:
    """A JSON-ready record of the code, libraries, hardware and precision of a run.

    ``precision``: the one the run uses; "auto" is resolved here the way the training loop resolves it."""
    device = torch.device(device)
    record: dict[str, Any] = {
        "package": PACKAGE,
        "version": package_version(),
        **git_state(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "numpy": str(np.__version__),
        "cuda": torch.version.cuda,  # None on CPU builds
        "device": str(device),
        "device_name": device_name(device),
        "precision": resolve_precision(precision, device) if precision == "auto" else precision,
        "bf16_fast": bf16_is_fast(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "command": command_line(),
    }
    if device.type == "cuda":
        record["gpu_count"] = torch.cuda.device_count()
        record["cudnn"] = torch.backends.cudnn.version()
    return record
