"""BatchNorm → (+ shortcut) → ReLU as one compiled CPU kernel, in training and in evaluation.

On a CPU these layers move memory and do almost no arithmetic, so their cost is the number of passes over each
activation. PyTorch runs BatchNorm, ReLU and their backward ops separately, 13-14 passes per activation (16-17 with
the residual add); ``kernels/bn_relu.cpp`` does the forward in three (statistics, then normalise-add-ReLU; four
with a residual) and the backward in five (seven with a residual, whose mask comes from the saved output), with
float32 arithmetic on float32 or bfloat16 tensors. A projection shortcut's BatchNorm, which no ReLU follows, runs
through the same kernel without the ReLU (:func:`batch_norm`). It is built once per machine (a C++ compiler,
~30-60 s, cached by torch in ``TORCH_EXTENSIONS_DIR``, with the package's other CPU kernels:
:mod:`simclrv2.models.cpu_kernels`) when a CPU session starts with ``run.fused_kernels`` on; without a compiler the
layers run as before, with a one-line warning.

The fused path changes nothing else: the same modules, parameters, running statistics and state-dict keys, so
checkpoints, the TF import and global BatchNorm see an ordinary ``nn.BatchNorm2d`` followed by ``nn.ReLU``.
It is taken only where it is exact to use: CPU, channels_last float32/bfloat16 tensors, a plain affine
``nn.BatchNorm2d`` that tracks running statistics, in training mode. In evaluation mode (running statistics), where
nothing needs a gradient (the kNN monitor, final evaluations, a distillation teacher), the same layers are one pass
over memory (``bn_relu_eval``) where PyTorch makes four (BatchNorm, then ReLU) or seven (with the add); with a
residual it also rounds once where PyTorch rounds BatchNorm's bf16 output before the add. The training kernels are
PyTorch operators (``torch.ops.simclrv2``), so a model under ``torch.compile`` keeps them and inductor fuses what
lies around them; traced, scripted or compiled evaluation runs PyTorch's ops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simclrv2.models.cpu_kernels import active_kernels

# Eager training calls the kernels through _BatchNormReLU (an autograd.Function: little Python per call). Under
# torch.compile they are PyTorch operators (torch.library), which dynamo traces as calls it keeps, with shapes from
# the fake versions below; their dispatch cost ~6 % of an eager width-0.25 bf16 step, so eager does not use them.
_FORWARD_SCHEMA = "(Tensor x, Tensor weight, Tensor bias, Tensor? residual, float eps, bool relu) -> (Tensor, " \
                  "Tensor, Tensor, Tensor, Tensor, Tensor)"
_BACKWARD_SCHEMA = "(Tensor grad, Tensor? out, Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor scale, " \
                   "Tensor shift, bool with_residual, bool relu) -> (Tensor, Tensor, Tensor, Tensor)"


@torch.library.custom_op("simclrv2::bn_relu_forward", mutates_args=(), schema=_FORWARD_SCHEMA)
def _forward_op(x, weight, bias, residual, eps, relu):
    """(output, batch mean, biased variance, invstd, scale, shift) of relu(batch_norm(x) [+ residual]), or of
    batch_norm(x) where ``relu`` is false."""
    return tuple(active_kernels().bn_relu_forward(x, weight, bias, residual, eps, relu))


@_forward_op.register_fake
def _(x, weight, bias, residual, eps, relu):
    stats = tuple(x.new_empty(x.shape[1], dtype=torch.float32) for _ in range(5))
    return (torch.empty_like(x, memory_format=torch.channels_last), *stats)


@torch.library.custom_op("simclrv2::bn_relu_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _backward_op(grad, out, x, mean, invstd, weight, scale, shift, with_residual, relu):
    """(grad x, grad weight, grad bias, grad residual: empty without one)."""
    grad_x, grad_weight, grad_bias, grad_residual = active_kernels().bn_relu_backward(
        grad, out, x, mean, invstd, weight, scale, shift, with_residual, relu)
    return grad_x, grad_weight, grad_bias, grad_residual if with_residual else x.new_empty(0)


@_backward_op.register_fake
def _(grad, out, x, mean, invstd, weight, scale, shift, with_residual, relu):
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    grad_residual = torch.empty_like(x, memory_format=torch.channels_last) if with_residual else x.new_empty(0)
    return grad_x, weight.new_empty(weight.shape, dtype=torch.float32), \
        weight.new_empty(weight.shape, dtype=torch.float32), grad_residual


def _save_for_backward(ctx, x: Tensor, weight: Tensor, residual: Tensor | None, relu: bool, output: tuple) -> None:
    out, mean, _var, invstd, scale, shift = output
    ctx.with_residual = residual is not None
    ctx.relu = relu
    # Without a residual the backward recomputes ReLU's mask from x; with one it reads the output.
    ctx.save_for_backward(x, mean, invstd, weight, scale, shift, *((out,) if ctx.with_residual else ()))


def _gradients(ctx, grad_out: Tensor, backward) -> tuple:
    """(grad x, grad weight, grad bias, grad residual or None) from what _save_for_backward kept."""
    x, mean, invstd, weight, scale, shift, *saved_out = ctx.saved_tensors
    grad_x, grad_weight, grad_bias, grad_residual = backward(
        grad_out, saved_out[0] if saved_out else None, x, mean, invstd, weight, scale, shift, ctx.with_residual,
        ctx.relu)
    return grad_x, grad_weight, grad_bias, (grad_residual if ctx.with_residual else None)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _bias, residual, _eps, relu = inputs
    _save_for_backward(ctx, x, weight, residual, relu, output)


def _backward(ctx, grad_out, *_grad_stats):
    return *_gradients(ctx, grad_out, torch.ops.simclrv2.bn_relu_backward), None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _BatchNormReLU(torch.autograd.Function):
    """The eager path: relu(batch_norm(x) [+ residual]) (or batch_norm(x)) with batch statistics -> (output, batch
    mean, variance)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None, eps: float, relu: bool):
        output = tuple(active_kernels().bn_relu_forward(x, weight, bias, residual, eps, relu))
        _save_for_backward(ctx, x, weight, residual, relu, output)
        ctx.mark_non_differentiable(output[1], output[2])
        return output[0], output[1], output[2]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        return *_gradients(ctx, grad_out, active_kernels().bn_relu_backward), None, None


def _kernel_tensors(x: Tensor, residual: Tensor | None) -> bool:
    """Whether x (and the residual) are tensors the kernels read: CPU, channels_last, float32 or bfloat16."""
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                and residual.is_contiguous(memory_format=torch.channels_last))


def _plain_batch_norm(bn: nn.Module) -> bool:
    """An affine ``nn.BatchNorm2d`` (not a subclass) that tracks running statistics: what the kernels implement."""
    return type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and bn.running_mean is not None


def _fusable(x: Tensor, bn: nn.Module, residual: Tensor | None) -> bool:
    """Whether this training-mode call may use the kernels (see the module docstring)."""
    if active_kernels() is None or not bn.training or not _plain_batch_norm(bn) or torch.jit.is_scripting():
        return False
    return _kernel_tensors(x, residual) and x.numel() // x.shape[1] >= 2


def _fusable_eval(x: Tensor, bn: nn.Module, residual: Tensor | None) -> bool:
    """Whether this evaluation-mode call (running statistics, nothing to differentiate) may use the one-pass kernel.
    Tracing, scripting and torch.compile see PyTorch's ops: an exported graph must not name our kernels, and
    inductor fuses BatchNorm in evaluation itself."""
    if active_kernels() is None or bn.training or not _plain_batch_norm(bn):
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, bn.weight, bn.bias, residual)):
        return False
    return _kernel_tensors(x, residual)


def _evaluated(x: Tensor, bn: nn.BatchNorm2d, residual: Tensor | None, relu: bool) -> Tensor:
    return active_kernels().bn_relu_eval(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, residual, bn.eps,
                                         relu)


def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does in training: momentum (or a cumulative average) on the unbiased variance."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var.dtype), factor)


def _fused(x: Tensor, bn: nn.BatchNorm2d, residual: Tensor | None, relu: bool) -> Tensor:
    if torch.compiler.is_compiling():
        out, mean, var, *_ = torch.ops.simclrv2.bn_relu_forward(x, bn.weight, bn.bias, residual, bn.eps, relu)
    else:
        out, mean, var = _BatchNormReLU.apply(x, bn.weight, bn.bias, residual, bn.eps, relu)
    _update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return out


def batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d, residual: Tensor | None = None) -> Tensor:
    """``relu(bn(x) + residual)`` (or ``relu(bn(x))``), fused where it can be, else PyTorch's ops."""
    if _fusable_eval(x, bn, residual):
        return _evaluated(x, bn, residual, relu=True)
    if not _fusable(x, bn, residual):
        y = bn(x)
        return torch.relu(y + residual) if residual is not None else torch.relu_(y)
    return _fused(x, bn, residual, relu=True)


def batch_norm(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``bn(x)`` through the same kernel where it can be (a projection shortcut's BatchNorm: PyTorch's training
    BatchNorm makes more passes over memory), else ``bn`` itself."""
    if _fusable_eval(x, bn, None):
        return _evaluated(x, bn, None, relu=False)
    return _fused(x, bn, None, relu=False) if _fusable(x, bn, None) else bn(x)


class FusingSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs each ``nn.BatchNorm2d`` directly followed by an ``nn.ReLU`` as one fused
    kernel where it can (:func:`batch_norm_relu`), and any other ``nn.BatchNorm2d`` through the kernel alone
    (:func:`batch_norm`); its modules and state dict are those of ``nn.Sequential``."""

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
            relu_follows = index + 1 < len(modules) and type(modules[index + 1]) is nn.ReLU
            if relu_follows and type(module) is nn.BatchNorm2d:
                x = batch_norm_relu(x, module)
                index += 2
                continue
            x = batch_norm(x, module) if type(module) is nn.BatchNorm2d else module(x)
            index += 1
        return x


