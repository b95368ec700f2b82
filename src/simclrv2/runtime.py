"""Where and how computation runs: device choice, bf16 autocast, channels_last and threads."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on CPU and GPU (no loss scaling needed, unlike fp16); fp32 runs untouched."""
    if precision == "bf16":
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


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A generator on the device where augmentation runs, so random draws never cross devices."""
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    return torch.Generator(device=gen_device).manual_seed(seed)
