"""Linear probe (docs/recipe.md#linear-probe) on cached frozen features: a softmax classifier on the encoder output.

Training works on standardised features z = (x − μ) / σ (μ, σ from the training features), which lets one
learning rate fit every encoder whatever the scale of its features; the returned ``nn.Linear`` has the
standardisation folded in, so it applies to raw features directly:
    W z + b = (W / σ) x + (b − (W / σ) μ).
Optimiser: Adam on mini-batches with a per-step cosine decay to 0, from a zero-initialised classifier; the
only randomness is the batch order, drawn from a generator seeded by ``seed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.optim import lr_at, set_lr

DEFAULT_LR = 0.01  # Adam on standardised features; see fit_linear_probe
_MIN_STD = 1e-6  # features with a smaller spread are constant: leave them unscaled rather than divide by ~0


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D,) mean and (D,) standard deviation of (N, D) features; constant features get σ = 1.

    ``torch.var_mean`` is Welford-stable in float32, so a million rows need no float64 copy."""
    var, mean = torch.var_mean(features.float(), dim=0, correction=0)
    std = var.sqrt()
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
    return mean, std


def fold_standardisation(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """A new Linear on raw features equal to ``linear`` applied to (x − mean) / std."""
    weight = linear.weight.detach().double() / std.to(linear.weight.device).double()  # (C, D)
    bias = linear.bias.detach().double() - weight @ mean.to(linear.weight.device).double()  # (C,)
    folded = nn.Linear(weight.shape[1], weight.shape[0], device=linear.weight.device)
    with torch.no_grad():
        folded.weight.copy_(weight.float())
        folded.bias.copy_(bias.float())
    return folded


def _check_inputs(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.dim() != 2 or not features.is_floating_point():
        raise SimCLRv2Error(f"features must be a float (N, D) matrix, got {features.dtype} "
                            f"{tuple(features.shape)}")
    if features.shape[0] == 0:
        raise SimCLRv2Error("no training features for the linear probe")
    if labels.shape != (features.shape[0],):
        raise SimCLRv2Error(f"expected {features.shape[0]} labels, got shape {tuple(labels.shape)}")
    if num_classes < 2:
        raise SimCLRv2Error(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    if labels.min().item() < 0 or labels.max().item() >= num_classes:
        raise SimCLRv2Error(f"labels must lie in [0, {num_classes}): check num_classes")
    if not torch.isfinite(features).all():
        raise SimCLRv2Error("features contain nan or inf: the encoder diverged or its checkpoint is broken")


def fit_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 1024,
    lr: float | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Linear:
    """A linear classifier (on the CPU, float32) for raw (N, D) features, trained with cross-entropy.

    ``lr`` is Adam's peak learning rate (default ``DEFAULT_LR``), decayed per step by a cosine to 0;
    ``weight_decay`` is an L2 penalty ½·wd·‖W‖² on the standardised-space weight (not the bias), part of the
    objective rather than of the optimiser. Deterministic given ``seed`` on a given device."""
    _check_inputs(train_features, train_labels, num_classes)
    lr = DEFAULT_LR if lr is None else lr
    if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise SimCLRv2Error(
            f"the linear probe needs epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0, got "
            f"{epochs}, {batch_size}, {lr}, {weight_decay}"
        )
    device = torch.device(device)
    x = train_features.to(device).float()
    mean, std = feature_stats(x)
    z = ((x - mean) / std).contiguous()  # (N, D)
    y = train_labels.to(device).long()
    n, dim = z.shape
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch

    # Zero init, as in fine-tuning (docs/recipe.md#fine-tuning): the seed then acts only through the batch order.
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)  # drawn on the CPU: the same on any device
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            set_lr(optimizer, lr_at(step, total_steps, lr, warmup_steps=0))
            logits = F.linear(z.index_select(0, batch), weight, bias)  # (B, C)
            loss = F.cross_entropy(logits, y.index_select(0, batch))
            if weight_decay:
                loss = loss + 0.5 * weight_decay * weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(weight.cpu())
        linear.bias.copy_(bias.cpu())
    return fold_standardisation(linear, mean.cpu(), std.cpu())


@torch.no_grad()
def evaluate_linear_probe(probe: nn.Linear, features: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """(N, C) logits of raw (N, D) features, computed on the probe's device and returned on the features'."""
    if features.dim() != 2 or features.shape[1] != probe.in_features:
        raise SimCLRv2Error(
            f"the probe takes (N, {probe.in_features}) features, got shape {tuple(features.shape)}: "
            "use features from the encoder it was trained on"
        )
    device = probe.weight.device
    chunks = [probe(features[start : start + chunk_size].to(device).float()).to(features.device)
              for start in range(0, features.shape[0], chunk_size)]
    if not chunks:
        return torch.empty(0, probe.out_features, device=features.device)
    return torch.cat(chunks)
