"""A tensor read by two paths (a residual block's input), whose two gradients are summed by a compiled kernel.

Where a tensor feeds two operations, PyTorch's autograd adds their gradients itself, with an in-place ``add_``
that for bfloat16 ran at ~10 GB/s on a 2-core AMX Xeon (``benchmarks/bn_relu_shapes.py``): the eight block
inputs of a width-1 ResNet-18 cost ~70 ms of a 1.1 s bf16 training step. :func:`branch` hands the tensor to the
two paths through one autograd node whose backward sums the gradients with the compiled ``add``
(:mod:`simclrv2.models.cpu_kernels`), one vectorised pass. The values are PyTorch's to the bit: the same float32
sum rounded once. It is taken where the kernels are on, in eager CPU training (under torch.compile inductor fuses
the sum itself); elsewhere the tensor is returned twice, as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from simclrv2.models.cpu_kernels import active_kernels

_DTYPES = (torch.float32, torch.bfloat16)


def _sum(a: Tensor, b: Tensor) -> Tensor:
    """a + b, by the compiled kernel where both are dense in one layout, else by PyTorch."""
    kernels = active_kernels()
    if (kernels is not None and a.dtype == b.dtype and a.dtype in _DTYPES and a.shape == b.shape
            and a.stride() == b.stride() and _dense(a)):
        return kernels.add(a, b)
    return a + b


def _dense(t: Tensor) -> bool:
    """Contiguous in memory as PyTorch's default layout or (4-D, the encoder's activations) channels_last."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


class _Branch(torch.autograd.Function):
    """x → (x, x) as two views; backward: the sum of their gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.view_as(x), x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_a: Tensor | None, grad_b: Tensor | None) -> Tensor | None:
        if grad_a is None or grad_b is None:
            return grad_b if grad_a is None else grad_a
        return _sum(grad_a, grad_b)


def branch(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, x)`` for two paths; in eager CPU training with the compiled kernels on, their gradients are summed
    by the compiled kernel instead of autograd's ``add_``."""
    if (active_kernels() is None or not (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu"
            or x.dtype not in _DTYPES or torch.compiler.is_compiling() or torch.jit.is_scripting()):
        return x, x
    return _Branch.apply(x)
