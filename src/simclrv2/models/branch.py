"""A tensor read by two paths (a residual block's input), whose two bf16 gradients are summed by a compiled kernel.

Where a tensor feeds two operations, PyTorch's autograd adds their gradients itself, with an in-place ``add_``.
In bfloat16 that add is slow: on a 2-core AMX Xeon (``benchmarks/bn_relu_shapes.py``) 12.95 ms for a first-stage
activation of width 1 (512 × 64 × 28 × 28, 12 GB/s), 46 ms for the eight block inputs of a width-1 ResNet-18's
~1.1 s step. :func:`branch` hands the tensor to the two paths through one autograd node whose backward sums the
gradients with the compiled ``add`` (:mod:`simclrv2.models.cpu_kernels`): 4.56 ms there, 19 ms for the eight, and
faster on every shape of widths 1 and 0.25. The values are PyTorch's to the bit: the same float32 sum rounded once
to bf16. In float32 PyTorch's in-place add was the faster one on every shape (6.25 against 9.20 ms at that shape:
it writes no new tensor), so float32 keeps it.
The branch is taken in eager CPU training with the kernels on (under torch.compile inductor fuses the sum itself);
elsewhere the tensor is returned twice, as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from simclrv2.models.cpu_kernels import active_kernels

# Where the compiled sum is faster than autograd's add_ (module docstring); the kernel also sums float32 tensors.
_BRANCH_DTYPES = (torch.bfloat16,)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def _sum(a: Tensor, b: Tensor) -> Tensor:
    """a + b, by the compiled kernel where both are dense in one layout, else by PyTorch."""
    kernels = active_kernels()
    if (kernels is not None and a.dtype == b.dtype and a.dtype in _KERNEL_DTYPES and a.shape == b.shape
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
    """``(x, x)`` for two paths; for a bf16 ``x`` in eager CPU training with the compiled kernels on, their
    gradients are summed by the compiled kernel instead of autograd's ``add_``."""
    if (active_kernels() is None or not (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu"
            or x.dtype not in _BRANCH_DTYPES or torch.compiler.is_compiling() or torch.jit.is_scripting()):
        return x, x
    return _Branch.apply(x)
