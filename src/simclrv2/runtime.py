"""Where and how computation runs: device choice, bf16 autocast, channels_last and threads."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; an unavailable device is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SimCLRv2Error(f"run.device = {name!r} but CUDA is not available; use run.device = 'cpu' or 'auto'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SimCLRv2Error(f"run.device = {name!r} but MPS is not available; use run.device = 'cpu' or 'auto'")
    return device


@functools.cache
def _bf16_is_fast(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


# ONEDNN_MAX_CPU_ISA values that leave oneDNN its AMX kernels (its other values name an ISA below AMX)
_ISA_CAPS_WITH_AMX = ("ALL", "DEFAULT")


def onednn_uses_amx(isa_cap: str | None = None) -> bool:
    """Whether oneDNN's bf16 kernels here run on AMX tiles: the CPU has them and ``isa_cap`` (the process's
    ``ONEDNN_MAX_CPU_ISA``, read by oneDNN once at start) does not hold oneDNN below them."""
    if not torch.cpu._is_amx_tile_supported():
        return False
    return isa_cap is None or isa_cap.upper() in _ISA_CAPS_WITH_AMX or "AMX" in isa_cap.upper()


# ONEDNN_MAX_CPU_ISA values that hold oneDNN to its AVX2 kernels on a CPU with AVX-512
_ISA_CAPS_AVX2 = ("AVX2", "AVX2_VNNI", "AVX2_VNNI_2")


def onednn_runs_avx2(isa_cap: str | None = None) -> bool:
    """Whether oneDNN's best kernels here are its AVX2 ones: the CPU has AVX2 but not AVX-512, or ``isa_cap`` (the
    process's ``ONEDNN_MAX_CPU_ISA``) holds oneDNN to AVX2."""
    if not torch.cpu._is_avx2_supported():
        return False
    if not torch.cpu._is_avx512_supported():
        return True
    return isa_cap is not None and isa_cap.upper() in _ISA_CAPS_AVX2


def avx512_bf16_without_amx(isa_cap: str | None = None) -> bool:
    """Whether the CPU has AVX-512 with BF16 but no AMX tiles, and ``isa_cap`` leaves oneDNN its AVX-512 kernels:
    AMD's Zen 4 and Zen 5 EPYCs (and Intel's rare Cooper Lake). Zen 4 runs a 512-bit FMA as two 256-bit halves, so
    oneDNN's AVX-512 fp32 kernels there do no more multiplications a cycle than AVX2 ones; Zen 5's are whole, and
    the rules chosen on Zen 4 measured faster there too (simclrv2.models.conv_rules)."""
    return (torch.cpu._is_avx512_bf16_supported() and not torch.cpu._is_amx_tile_supported()
            and not onednn_runs_avx2(isa_cap))


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 convolutions run on native kernels here. On a CPU without AVX-512 BF16/AMX, oneDNN has no
    bf16 path and PyTorch falls back to a reference convolution that is 10-20x slower than fp32."""
    return _bf16_is_fast(device.type)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes bf16 where it is fast and fp32 elsewhere; an explicit choice is kept (with a warning
    when bf16 will be slow, since that is a legitimate experiment but rarely what a user wants)."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    if precision == "bf16-math" and device.type != "cpu":
        raise SimCLRv2Error(f"run.precision = 'bf16-math' is a CPU mode (oneDNN fpmath); on {device.type} use "
                            + ("'bf16', 'tf32' or 'fp32'" if device.type == "cuda" else "'bf16' or 'fp32'"))
    if precision == "tf32" and device.type != "cuda":
        raise SimCLRv2Error(f"run.precision = 'tf32' is a CUDA mode (TF32 tensor cores); on {device.type} use "
                            + ("'bf16', 'fp32' or 'bf16-math'" if device.type == "cpu" else "'bf16' or 'fp32'"))
    if precision in ("bf16", "bf16-math") and not bf16_is_fast(device):
        warnings.warn(f"bf16 has no fast kernels on this {device.type}; run.precision = 'fp32' or 'auto' is faster",
                      stacklevel=2)
    return precision


def set_fp32_math(precision: str) -> None:
    """How fp32 convolutions and matmuls multiply, for the whole process: each stage sets it from its own config
    when it starts, in the forward and the backward pass alike. Exactly in fp32 for every precision but two
    opt-in modes: ``bf16-math`` lets oneDNN multiply in bf16 on the CPU and ``tf32`` lets CUDA's tensor cores multiply
    in TF32 (both sum in fp32). PyTorch's own default runs cuDNN's fp32 convolutions in TF32; ``fp32`` turns that
    off, so that ``fp32`` means fp32 on every device."""
    _set_mkldnn_math(precision)
    _set_cuda_math(precision)


def _onednn_math_backends() -> list:
    """oneDNN's convolution and matmul settings whose ``fp32_precision`` the fpmath mode sets; empty on a torch
    older than the setting."""
    backends = [getattr(torch.backends.mkldnn, kind, None) for kind in ("conv", "matmul")]
    return backends if all(hasattr(backend, "fp32_precision") for backend in backends) else []


def _set_mkldnn_math(precision: str) -> None:
    backends = _onednn_math_backends()
    if not backends:
        if precision == "bf16-math":
            raise SimCLRv2Error(f"run.precision = 'bf16-math' needs a torch with torch.backends.mkldnn.conv."
                                f"fp32_precision (this is {torch.__version__}); upgrade torch or use 'bf16' or 'fp32'")
        return
    for backend in backends:
        backend.fp32_precision = "bf16" if precision == "bf16-math" else "none"


@contextlib.contextmanager
def onednn_fp32_math(precision: str) -> Iterator[None]:
    """:func:`set_fp32_math`'s oneDNN half for one block, the process's setting put back after it: the convolution
    rules read it (``conv.fp32_math_is_exact``), so ``simclrv2 info`` plans under it as a run of ``precision``
    would."""
    backends = _onednn_math_backends()
    if not backends:
        yield
        return
    saved = [backend.fp32_precision for backend in backends]
    _set_mkldnn_math(precision)
    try:
        yield
    finally:
        for backend, value in zip(backends, saved, strict=True):
            backend.fp32_precision = value


def _set_cuda_math(precision: str) -> None:
    """TF32 on or off for cuBLAS and cuDNN, through torch's ``allow_tf32`` flags: its newer ``fp32_precision``
    settings, once set, make torch refuse to read those flags, which its own code still does (``cudnn.flags()`` in
    the ONNX export, for one); the flags set both."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on CPU and GPU (no loss scaling needed, unlike fp16); fp32 runs untouched."""
    if resolve_precision(precision, device) == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def keep_freed_memory() -> bool:
    """Serve large CPU tensors from glibc's heap and keep freed memory there for the next step.

    By default glibc maps every allocation above 32 MB afresh (``mmap``) and unmaps it on free, so each large
    activation and gradient of every step is page-faulted in again: on a 2-core Xeon this held memory-bound
    passes (ReLU's backward, copies, adds) to 6-9 GB/s instead of 23-33 and made a width-1 step a quarter slower
    (``benchmarks/step_profile.py``, ``benchmarks/pretrain_throughput.py --no-keep-freed-memory``).
    With mmap off (``M_MMAP_MAX`` 0) and trimming off, the memory of one step is reused by the next; the
    process keeps its peak memory until it exits, as training does anyway. Returns whether it applied: only
    glibc has these settings (elsewhere, e.g. macOS or musl, nothing changes)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def flush_denormals() -> None:
    """Denormal floats (below ~1e-38) cost x86 CPUs ~40x per operation. A student trained from scratch at
    distillation temperature 1 fills its backward pass with them (measured: 96 steps took 6 minutes instead of
    8 s); flushing them to zero changes no reported digit. A no-op where the CPU has no such mode."""
    torch.set_flush_denormal(True)


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A generator on the device where augmentation runs, so random draws never cross devices."""
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    return torch.Generator(device=gen_device).manual_seed(seed)
