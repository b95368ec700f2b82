"""LARS, the parameter groups it needs, learning-rate scaling and the per-step schedule (SPEC stage 1)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) as SimCLR uses it.

    For a parameter w with gradient g, weight decay wd, trust coefficient η and momentum m:

        g' = g + wd·w
        trust = η‖w‖ / (‖g‖ + wd‖w‖)   if ‖w‖ > 0 and ‖g‖ > 0, else 1
        v ← m·v + lr·trust·g'
        w ← w − v

    Parameters in a group with ``lars_exclude=True`` (BN parameters and biases, SPEC) get neither weight decay
    nor the trust ratio: plain momentum SGD with the same learning rate.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                 trust_coefficient: float = 1e-3, eps: float = 1e-9) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise SimCLRv2Error(f"bad LARS settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                                f"trust_coefficient={trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the class docstring gives the rule
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum = group["lr"], group["momentum"]
            if group["lars_exclude"]:
                updates = grads
                scales = [lr] * len(params)
            else:
                wd, eta = group["weight_decay"], group["trust_coefficient"]
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                updates = torch._foreach_add(grads, params, alpha=wd) if wd else grads
                scales = []
                for w_norm, g_norm in zip(w_norms, g_norms, strict=True):
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        eta * w_norm / (g_norm + wd * w_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    scales.append(trust * lr)
            for p, update, scale in zip(params, updates, scales, strict=True):
                state = self.state[p]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = torch.zeros_like(p)
                buffer.mul_(momentum).add_(update * scale)
                p.sub_(buffer)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and BN parameters + biases (neither, SPEC).

    A parameter with at most one dimension is a bias or a BN scale/shift; that rule covers every layer here.
    """
    adapted, excluded = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (excluded if parameter.ndim <= 1 else adapted).append(parameter)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


def scaled_learning_rate(base_lr: float, batch_size: int, rule: str) -> float:
    """``linear``: base·BS/256 (SimCLR v1); ``sqrt``: base·√BS (better for small batches, SimCLRv2)."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise SimCLRv2Error(f"learning-rate scaling {rule!r} is not one of: linear, sqrt")


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    return int(round(total_steps * warmup_fraction))


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int) -> float:
    """The learning rate at a global step: linear warmup to ``peak_lr``, then cosine decay to 0.

    Warmup: peak·(step + 1)/warmup for step < warmup (the first step already moves). Then
    peak·½(1 + cos(π·t)), t = (step − warmup)/(total − warmup). A pure function of the step, so resuming
    needs no scheduler state and a schedule can never be stepped per epoch by mistake.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
