"""Global batch normalisation: statistics over the whole global batch, on any device and backend.

SimCLR's BN statistics must be global (docs/recipe.md#distributed-training): with per-process statistics each process
can tell its own samples apart by their BN shift and the contrastive task leaks. ``torch.nn.SyncBatchNorm``
does this only on CUDA (converting a CPU model succeeds and the first forward fails), so this module
all-reduces the per-channel sum, sum of squares and count itself; on CUDA with NCCL ``convert_to_global_bn``
still prefers SyncBatchNorm, the fused fast path.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from simclrv2 import dist


class _GlobalBatchNorm(_BatchNorm):
    """nn.BatchNorm whose batch statistics cover every process; identical to nn.BatchNorm without a group or
    when running statistics are used (eval). Every process must run forward and backward (collectives)."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        uses_batch_stats = self.training or self.running_mean is None
        if not uses_batch_stats or dist.world_size() == 1:
            return super().forward(x)
        return self._global_forward(x)

    def _global_forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        reduce_dims = [0, *range(2, x.dim())]
        broadcast = (1, channels) + (1,) * (x.dim() - 2)
        # Statistics in at least fp32 (fp16/bf16 inputs under autocast), as nn.BatchNorm does.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = xf.new_full((1,), x.numel() // channels)  # values per channel here
        local = torch.cat([xf.sum(reduce_dims), (xf * xf).sum(reduce_dims), count])  # (2C + 1,)
        total = dist.all_reduce_sum_with_grad(local)  # differentiable: the backward sums over processes
        n = total[-1]
        mean = total[:channels] / n  # (C,)
        # E[x²] − E[x]² in fp32 loses digits only when |mean| ≫ std, not the case for conv/linear outputs.
        var = (total[channels:-1] / n - mean * mean).clamp_min(0)  # (C,) biased, used to normalise

        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))

        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(xf.dtype)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.to(xf.dtype)
        return (xf * scale.view(broadcast) + shift.view(broadcast)).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum=None is nn.BatchNorm's cumulative moving average (the .item() sync happens only then).
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
        dtype = self.running_mean.dtype
        self.running_mean.mul_(1 - factor).add_(mean.to(dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(dtype), alpha=factor)


class GlobalBatchNorm1d(_GlobalBatchNorm):
    """Global BN over (N, C) or (N, C, L) inputs (the projection head's BNs)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.dim()}D input)")


class GlobalBatchNorm2d(_GlobalBatchNorm):
    """Global BN over (N, C, H, W) inputs (the encoder's BNs)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")


def _nccl_group() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_backend() == "nccl"


def _to_global(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> _GlobalBatchNorm:
    cls = GlobalBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else GlobalBatchNorm1d
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    # The same Parameter and buffer objects, so a BN without β (the head's last layer) or with frozen
    # parameters stays exactly that, and the device and dtype are kept.
    new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _to_global(module)
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            module.add_module(name, converted)
    return module


def convert_to_global_bn(module: nn.Module, prefer_sync_batchnorm: bool = True) -> nn.Module:
    """Replaces every BatchNorm1d/2d in ``module`` (in place; returns the root) by a globally synced BN.

    With an NCCL process group (CUDA) and ``prefer_sync_batchnorm`` this is torch's SyncBatchNorm, the fused
    fast path; otherwise GlobalBatchNorm1d/2d, which work on every backend (gloo on CPU included) and behave
    like nn.BatchNorm without a group. Weights, buffers, the affine flag and a missing bias are kept.
    """
    if prefer_sync_batchnorm and _nccl_group():
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)
