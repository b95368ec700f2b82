"""The package's compiled CPU kernels: built once per machine, switched on per process.

Five families live in one extension (``kernels/``): the fused training BatchNorm → (+ shortcut) → ReLU
(:mod:`simclrv2.models.bn_relu`), the memory re-layouts of the convolutions that run as GEMMs (the im2col
patches and the gradient's transpose, :mod:`simclrv2.models.conv_gemm`), the sum of a residual block input's two
gradients (:mod:`simclrv2.models.branch`) and Selective Kernels' stream mix and spatial mean
(:mod:`simclrv2.models.selective_kernel`), which only move memory or do almost no arithmetic, where PyTorch's
generic copies and separate ops make several slow passes; and convolutions of our own: direct ones for the shapes
oneDNN runs far below the machine (a one-channel stem, an fp32 16-channel 3×3 layer), and Winograd's F(4×4, 3×3)
and F(2×2, 3×3) for fp32 3×3 layers where oneDNN runs AVX2 (:mod:`simclrv2.models.conv_rules`,
:mod:`simclrv2.models.winograd`).
The extension is compiled
with the system's C++ compiler (~30-60 s, cached by torch in ``TORCH_EXTENSIONS_DIR``) when a CPU session starts with
``run.fused_kernels`` on; without a compiler everything runs PyTorch's ops as before, with a one-line warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from simclrv2.logs import get_logger

KERNEL_DIR = Path(__file__).with_name("kernels")
# The translation units the compiler sees: the largest kernel file alone, and everything else in one unit
# (extension.cpp includes the other files): a first build on 2 cores took 29 s against 41 with seven units.
SOURCE_NAMES = ("bn_relu.cpp", "extension.cpp")
# Built where it runs, for the host's vector units; on x86 with AVX-512, its 512-bit registers (gcc prefers 256 by
# default): the bf16 BatchNorm backward was faster with them on an AVX-512 Xeon.
_FLAGS = ["-O3", "-march=native", "-fopenmp"] + (
    ["-mprefer-vector-width=512"] if platform.machine().lower() in ("x86_64", "amd64") else [])
# Compiler flags added after those, from the environment: e.g. "-mno-avx512f" builds the kernels as for an AVX2-only
# CPU, to time or test that code path on a newer machine (with ONEDNN_MAX_CPU_ISA=AVX2 holding oneDNN there too).
FLAGS_VARIABLE = "SIMCLRV2_CPU_KERNEL_FLAGS"


def _flags() -> list[str]:
    return _FLAGS + os.environ.get(FLAGS_VARIABLE, "").split()


def compiler() -> str:
    """The C++ compiler torch's extension builder runs: ``CXX`` where set, else ``c++`` (its rule). On Linux use
    g++: clang++ builds the kernels (given LLVM's ``libomp``) but :func:`build_kernels` sets that build aside."""
    return os.environ.get("CXX", "c++")


def compiler_available() -> bool:
    """Whether :func:`compiler` is on the PATH: the kernels' build and the tests that need it check this first."""
    return shutil.which(compiler()) is not None


# File-name prefixes of the OpenMP runtimes: GCC's, LLVM's and Intel's.
_OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")


def openmp_runtimes(maps_file: Path = Path("/proc/self/maps")) -> set[str]:
    """The paths of the OpenMP runtimes loaded in this process (from ``/proc/self/maps``; empty where there is none).
    torch brings one; a kernel library built by a compiler of another family (clang++ beside torch's libgomp) brings
    a second, whose thread pool spins against torch's: the kernels then ran a step at about half the speed of
    PyTorch's own ops (docs/speed.md, machine k)."""
    try:
        maps = maps_file.read_text()
    except OSError:
        return set()
    fields = (line.split(maxsplit=5) for line in maps.splitlines())  # address perms offset device inode [path]
    paths = {parts[5] for parts in fields if len(parts) == 6 and parts[5].startswith("/")}
    return {path for path in paths if Path(path).name.startswith(_OPENMP_RUNTIMES)}


def _build_failure(error: Exception) -> str:
    """The line of a failed build that says why: the compiler's first error where the message carries its output
    (torch puts the failing command first, which says nothing), else the message's first line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reasons = [line for line in lines if "error:" in line.lower()]
    return (reasons or lines or [type(error).__name__])[0]

# This process's switch, like torch.backends' flags: "built" caches the compiled library (None: it could not be
# built, so later sessions neither retry nor warn again), "active" is the library while the current session has the
# kernels on (each session sets it from run.fused_kernels).
_KERNELS: dict[str, ModuleType | None] = {}


def _build_name() -> str:
    """Unique per source, compiler flags, torch version and CPU: a home directory shared by machines with other
    vector units (a cluster's NFS) must not load a library compiled with ``-march=native`` elsewhere."""
    from simclrv2.provenance import cpu_kind  # provenance imports models; importing here avoids the cycle

    digest = hashlib.sha256()
    for path in sorted([*KERNEL_DIR.glob("*.cpp"), *KERNEL_DIR.glob("*.h")]):  # every file the build reads
        digest.update(path.read_bytes())
    digest.update(" ".join([compiler(), *_flags()]).encode())
    digest.update(torch.__version__.encode())
    digest.update(repr(sorted(cpu_kind().items())).encode())
    return f"simclrv2_cpu_kernels_{digest.hexdigest()[:12]}"


def build_kernels() -> ModuleType | None:
    """Compile (or load the cached build of) the kernels; None, with a warning saying why, where that is
    impossible. Does not switch them on (:func:`use_fused_kernels` does)."""
    if "built" in _KERNELS:
        return _KERNELS["built"]
    log = get_logger()
    if not compiler_available():
        log.warning(f"compiled CPU kernels unavailable: no C++ compiler ({compiler()!r} not found: install g++ or "
                    "set CXX, or set run.fused_kernels = false to silence this); using PyTorch's ops")
        _KERNELS["built"] = None
        return None
    from torch.utils.cpp_extension import load

    log.info("compiled CPU kernels (fused BatchNorm-ReLU, convolution re-layouts, gradient sums, Selective Kernels' "
             "mix, direct and Winograd convolutions): loading (the first time on a machine compiles them, ~30-60 s)")
    torch_runtimes = openmp_runtimes()
    try:
        module = load(_build_name(), [str(KERNEL_DIR / name) for name in SOURCE_NAMES], extra_cflags=_flags(),
                      extra_ldflags=["-fopenmp"])
    except Exception as error:  # any failure to build or load means PyTorch's ops, said once
        log.warning(f"compiled CPU kernels failed to build with {compiler()!r} ({_build_failure(error)}); using "
                    "PyTorch's ops")
        _KERNELS["built"] = None
        return None
    added = sorted(openmp_runtimes() - torch_runtimes)
    if torch_runtimes and added:  # loaded but never called: its threads never start
        log.warning(f"compiled CPU kernels not used: built with {compiler()!r}, they load a second OpenMP runtime "
                    f"({', '.join(Path(path).name for path in added)}) beside torch's "
                    f"({', '.join(sorted(Path(path).name for path in torch_runtimes))}), whose thread pools contend "
                    "(slower than PyTorch's ops); build them with g++ (unset CXX or set CXX=g++); using PyTorch's ops")
        _KERNELS["built"] = None
        return None
    _KERNELS["built"] = module
    return module


def use_fused_kernels(enabled: bool) -> bool:
    """Switch the kernels on (building them if need be) or off for this process; returns whether they are on.
    Training sessions call it with ``run.fused_kernels`` on CPU (and False elsewhere)."""
    kernels = build_kernels() if enabled else None
    if kernels is None:
        _KERNELS.pop("active", None)
        return False
    _KERNELS["active"] = kernels
    return True


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[bool]:
    """The kernels on (or off) for a block, and the switch as it was afterwards; yields whether they are on. For
    commands that may run inside another program's process (``simclrv2.cli.main``: predict, embed), which must not
    change how that program's later forward passes run."""
    before = _KERNELS.get("active")
    try:
        yield use_fused_kernels(enabled)
    finally:
        if before is None:
            _KERNELS.pop("active", None)
        else:
            _KERNELS["active"] = before


def active_kernels() -> ModuleType | None:
    """The kernels if they are on; never builds (a forward pass must not start a compiler)."""
    return _KERNELS.get("active")
