"""LARS, its parameter groups, learning-rate scaling and the per-step schedule (docs/recipe.md#lars)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) as SimCLR uses it.

    For each parameter tensor w with gradient g, learning rate lr, weight decay wd, trust coefficient η,
    momentum m and momentum buffer v (0 before the first step):

        g'    = g + wd·w
        trust = η‖w‖ / (‖g‖ + wd‖w‖ + eps)   if ‖w‖ > 0 and ‖g‖ > 0, else 1
        v     ← m·v + lr·trust·g'
        w     ← w − v

    Parameters in a ``lars_exclude=True`` group (BN parameters and biases, docs/recipe.md#lars) get neither weight decay
    nor the trust ratio, whatever the group's ``weight_decay``: v ← m·v + lr·g (plain momentum SGD). ``eps``
    only guards the division; docs/recipe.md#lars has eps = 0. Use :func:`param_groups` to build the groups.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                 trust_coefficient: float = 1e-3, eps: float = 1e-9) -> None:
        if not (lr >= 0 and 0 <= momentum < 1 and weight_decay >= 0 and trust_coefficient > 0 and eps >= 0):
            raise SimCLRv2Error(f"bad LARS settings: lr={lr} (needs >= 0), momentum={momentum} (in [0, 1)), "
                                f"weight_decay={weight_decay} (>= 0), trust_coefficient={trust_coefficient} "
                                f"(> 0), eps={eps} (>= 0)")
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
            if any(p.grad.is_sparse for p in params):
                raise SimCLRv2Error("LARS does not support sparse gradients; use dense embeddings")
            grads = [p.grad for p in params]
            buffers = [self._momentum_buffer(p) for p in params]
            lr = group["lr"]
            if group["lars_exclude"]:
                updates = grads  # plain momentum SGD: v ← m·v + lr·g
            else:
                wd = group["weight_decay"]
                trust = _trust_ratios(params, grads, wd, group["trust_coefficient"], group["eps"])
                updates = torch._foreach_add(grads, params, alpha=wd)  # g' = g + wd·w (a new list: grads stay)
                torch._foreach_mul_(updates, trust)  # trust·g'
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates, alpha=lr)
            torch._foreach_sub_(params, buffers)
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def _trust_ratios(params: list[torch.Tensor], grads: list[torch.Tensor], weight_decay: float, eta: float,
                  eps: float) -> list[torch.Tensor]:
    """η‖w‖ / (‖g‖ + wd‖w‖ + eps) per tensor, 1 where ‖w‖ or ‖g‖ is 0; one batched computation per device."""
    w_norms = torch._foreach_norm(params)
    g_norms = torch._foreach_norm(grads)
    ratios: dict[int, torch.Tensor] = {}
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    for indices in by_device.values():
        w = torch.stack([w_norms[i] for i in indices])  # (P,)
        g = torch.stack([g_norms[i] for i in indices])  # (P,)
        # where() picks 1 before a 0/0 (eps = 0) can leak a NaN into the step
        trust = torch.where((w > 0) & (g > 0), eta * w / (g + weight_decay * w + eps), torch.ones_like(w))
        for i, ratio in zip(indices, trust.unbind(), strict=True):
            ratios[i] = ratio
    return [ratios[i] for i in range(len(params))]


def param_groups(model: nn.Module, weight_decay: float, plain: Sequence[nn.Module] = ()) -> list[dict]:
    """Two groups for :class:`LARS`: weights (decayed, trust-ratio adapted) and BN parameters + biases (neither,
    docs/recipe.md#lars). A parameter with at most one dimension is a bias or a BN/norm scale or shift; that rule covers
    every layer in this package. Frozen parameters (``requires_grad=False``) are left out.

    ``plain`` modules go entirely to the second group: the reference does this for the supervised head, whose
    zero-initialised weights would otherwise get a trust ratio of about η·‖w‖/‖g‖ ≈ 0 and barely move.
    """
    if weight_decay < 0:
        raise SimCLRv2Error(f"weight_decay must be >= 0, got {weight_decay}")
    forced = {id(p) for module in plain for p in module.parameters()}
    adapted, excluded = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (excluded if parameter.ndim <= 1 or id(parameter) in forced else adapted).append(parameter)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


def scaled_learning_rate(base_lr: float, batch_size: int, rule: str) -> float:
    """``linear``: base·BS/256 (SimCLR v1); ``sqrt``: base·√BS (better for small batches and long runs, v2);
    ``none``: base (Adam-style rates that do not grow with the batch)."""
    if batch_size < 1 or base_lr < 0:
        raise SimCLRv2Error(f"learning-rate scaling needs batch_size >= 1 and base_lr >= 0, got {batch_size}, "
                            f"{base_lr}")
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise SimCLRv2Error(f"learning-rate scaling {rule!r} is not one of: linear, sqrt, none")


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    """Warmup length in steps: the fraction of the whole run (SimCLRv2: 5 %), rounded to the nearest step."""
    if not 0 <= warmup_fraction <= 1 or total_steps < 0:
        raise SimCLRv2Error(f"warmup needs a fraction in [0, 1] of total_steps >= 0, got {warmup_fraction} of "
                            f"{total_steps}")
    return int(round(total_steps * warmup_fraction))


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int) -> float:
    """The learning rate at a global step (0-based): linear warmup to ``peak_lr``, then cosine decay to 0.

    step < warmup:  peak·(step + 1)/warmup (the first step already moves; the last warmup step is at the peak)
    otherwise:      peak·½(1 + cos(π·t)), t = min(1, (step − warmup)/(total − warmup))

    A pure function of the global step, so resuming needs no scheduler state and a schedule cannot be stepped
    per epoch by mistake (docs/recipe.md#schedule). Steps past ``total_steps`` stay at 0.
    """
    if step < 0 or total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise SimCLRv2Error(f"lr_at needs step >= 0, total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                            f"step={step}, total_steps={total_steps}, warmup_steps={warmup_steps}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every group's learning rate: the schedule is global, times a group's optional ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def build_optimizer(groups: list[dict], name: str, lr: float, weight_decay: float,
                    momentum: float, fused: bool | None = None) -> torch.optim.Optimizer:
    """``lars`` (the paper's), ``sgd`` with momentum or ``adamw`` over :func:`param_groups`' two groups, so
    BN parameters and biases are excluded from weight decay whichever optimiser runs. The rate is set per step
    by :func:`set_lr`; ``lr`` is only the starting value. ``fused`` (SGD, AdamW): None picks
    :func:`fused_on_cpu`'s step, False PyTorch's default one (what the speed A/B compares against)."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    plain = [{k: v for k, v in group.items() if k != "lars_exclude"} for group in groups]
    step = fused_on_cpu(plain) if fused is None else {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum, weight_decay=weight_decay, **step)
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay, **step)
    raise SimCLRv2Error(f"optimizer {name!r} is not one of: lars, sgd, adamw")


def fused_on_cpu(groups: list[dict]) -> dict:
    """PyTorch's fused SGD and AdamW step (one vectorised pass a tensor) where every parameter is on the CPU, whose
    default runs several ops a tensor from Python; elsewhere PyTorch's default. A checkpoint saved without it resumes
    without it (its groups carry the setting)."""
    on_cpu = all(p.device.type == "cpu" for group in groups for p in group["params"])
    return {"fused": True} if on_cpu else {}
