"""Training-mode BatchNorm → (+ shortcut) → ReLU as one compiled CPU kernel.

On a CPU these layers move memory and do almost no arithmetic, so their cost is the number of passes over each
activation. PyTorch runs BatchNorm, ReLU and their backward ops separately, 13-14 passes per activation (16-17 with
the residual add); ``kernels/bn_relu.cpp`` does the forward in three (statistics, then normalise-add-ReLU; four
with a residual) and the backward in five (eight with a residual, whose mask comes from the saved output), with
float32 arithmetic on float32 or bfloat16 tensors. It is built once per machine (a C++ compiler, ~30 s, cached by
torch in ``TORCH_EXTENSIONS_DIR``) when a CPU session starts with ``run.fused_kernels`` on; without a compiler the
layers run as before, with a one-line warning.

The fused path changes nothing else: the same modules, parameters, running statistics and state-dict keys, so
checkpoints, the TF import and global BatchNorm see an ordinary ``nn.BatchNorm2d`` followed by ``nn.ReLU``.
It is taken only where it is exact to use: training mode on CPU, channels_last float32/bfloat16 tensors, a
plain affine ``nn.BatchNorm2d`` that tracks running statistics, and not inside ``torch.compile`` (which fuses
on its own terms).
"""

from __future__ import annotations

import hashlib
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from simclrv2.logs import get_logger

SOURCE = Path(__file__).with_name("kernels") / "bn_relu.cpp"
# Built where it runs, for the host's vector units; on x86 with AVX-512, its 512-bit registers (gcc prefers 256 by
# default): the bf16 backward was faster with them on an AVX-512 Xeon.
_FLAGS = ["-O3", "-march=native", "-fopenmp"] + (
    ["-mprefer-vector-width=512"] if platform.machine().lower() in ("x86_64", "amd64") else [])

# This process's switch, like torch.backends' flags: "built" caches the compiled library, "active" is the library
# while the current session has the kernels on (each session sets it from run.fused_kernels).
_KERNELS: dict[str, ModuleType] = {}


def _build_name() -> str:
    """Unique per source, compiler flags, torch version and CPU: a home directory shared by machines with other
    vector units (a cluster's NFS) must not load a library compiled with ``-march=native`` elsewhere."""
    from simclrv2.provenance import cpu_kind  # provenance imports models; importing here avoids the cycle

    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(_FLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(repr(sorted(cpu_kind().items())).encode())
    return f"simclrv2_bn_relu_{digest.hexdigest()[:12]}"


def build_kernels() -> ModuleType | None:
    """Compile (or load the cached build of) the fused kernels; None, with a warning saying why, where that is
    impossible. Does not switch them on (:func:`use_fused_kernels` does)."""
    if "built" in _KERNELS:
        return _KERNELS["built"]
    log = get_logger()
    if shutil.which("c++") is None and shutil.which("g++") is None:
        log.warning("fused BatchNorm-ReLU kernels unavailable: no C++ compiler (install g++, or set "
                    "run.fused_kernels = false to silence this); using PyTorch's separate ops")
        return None
    from torch.utils.cpp_extension import load

    log.info("fused BatchNorm-ReLU CPU kernels: loading (the first time on a machine compiles them, ~30 s)")
    try:
        module = load(_build_name(), [str(SOURCE)], extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"])
    except (RuntimeError, OSError, ImportError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning(f"fused BatchNorm-ReLU kernels failed to build ({first_line}); using PyTorch's separate ops")
        return None
    _KERNELS["built"] = module
    return module


def use_fused_kernels(enabled: bool) -> bool:
    """Switch the fused path on (building the kernels if need be) or off for this process; returns whether it is
    on. Training sessions call it with ``run.fused_kernels`` on CPU (and False elsewhere)."""
    kernels = build_kernels() if enabled else None
    if kernels is None:
        _KERNELS.pop("active", None)
        return False
    _KERNELS["active"] = kernels
    return True


def active_kernels() -> ModuleType | None:
    """The kernels if the fused path is on; never builds (a forward pass must not start a compiler)."""
    return _KERNELS.get("active")


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x) [+ residual]) with batch statistics; returns (output, batch mean, biased variance)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None, eps: float,
                kernels: ModuleType) -> tuple[Tensor, Tensor, Tensor]:
        out, mean, var, invstd, scale, shift = kernels.forward(x, weight, bias, residual, eps)
        ctx.with_residual = residual is not None
        # Without a residual the backward recomputes ReLU's mask from x; with one it reads the output.
        saved_out = (out,) if ctx.with_residual else ()
        ctx.save_for_backward(x, mean, invstd, weight, scale, shift, *saved_out)
        ctx.kernels = kernels
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        x, mean, invstd, weight, scale, shift, *saved_out = ctx.saved_tensors
        grad_x, grad_weight, grad_bias, grad_residual = ctx.kernels.backward(
            grad_out, saved_out[0] if saved_out else None, x, mean, invstd, weight, scale, shift, ctx.with_residual)
        return grad_x, grad_weight, grad_bias, (grad_residual if ctx.with_residual else None), None, None


def _fusable(x: Tensor, bn: nn.Module, residual: Tensor | None) -> ModuleType | None:
    """The kernels if this call may use them (see the module docstring), else None."""
    kernels = active_kernels()
    if kernels is None or not bn.training or type(bn) is not nn.BatchNorm2d:
        return None
    if torch.compiler.is_compiling() or torch.jit.is_scripting():
        return None
    if not (bn.affine and bn.track_running_stats and bn.running_mean is not None):
        return None
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    if not x.is_contiguous(memory_format=torch.channels_last) or x.numel() // x.shape[1] < 2:
        return None
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or not residual.is_contiguous(memory_format=torch.channels_last)):
        return None
    return kernels


def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does in training: momentum (or a cumulative average) on the unbiased variance."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var.dtype), factor)


def batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d, residual: Tensor | None = None) -> Tensor:
    """``relu(bn(x) + residual)`` (or ``relu(bn(x))``), fused where it can be, else PyTorch's ops."""
    kernels = _fusable(x, bn, residual)
    if kernels is None:
        y = bn(x)
        return torch.relu(y + residual) if residual is not None else torch.relu_(y)
    out, mean, var = _BatchNormReLU.apply(x, bn.weight, bn.bias, residual, bn.eps, kernels)
    _update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return out


class FusingSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs each ``nn.BatchNorm2d`` directly followed by an ``nn.ReLU`` as one fused
    kernel where it can (:func:`batch_norm_relu`); its modules and state dict are those of ``nn.Sequential``."""

    def forward(self, x: Tensor) -> Tensor:
        return self._run(list(self), x)

    def forward_add_relu(self, x: Tensor, shortcut: Tensor) -> Tensor:
        """``relu(self(x) + shortcut)``, the last BatchNorm fused with the add and the ReLU where it can be."""
        modules = list(self)
        if modules and isinstance(modules[-1], nn.BatchNorm2d):
            return batch_norm_relu(self._run(modules[:-1], x), modules[-1], shortcut)
        return torch.relu(self._run(modules, x) + shortcut)

    @staticmethod
    def _run(modules: list[nn.Module], x: Tensor) -> Tensor:
        index = 0
        while index < len(modules):
            module = modules[index]
            follows_relu = index + 1 < len(modules) and type(modules[index + 1]) is nn.ReLU
            if follows_relu and type(module) is nn.BatchNorm2d:
                x = batch_norm_relu(x, module)
                index += 2
                continue
            x = module(x)
            index += 1
        return x


