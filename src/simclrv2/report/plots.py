"""The report's figures, drawn on plain matplotlib ``Figure`` objects (no pyplot: its global state would leak
into a notebook that imports this), and the PCA behind the embedding picture. Accuracies arrive as fractions
and are drawn in percent; matplotlib is imported inside the functions so the package works without it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from simclrv2.atomic import atomic_write_bytes
from simclrv2.errors import SimCLRv2Error

DPI = 110
Curve = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SimCLRv2Error("the report needs matplotlib: pip install 'simclrv2[report]'") from exc


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    """Atomic: a reader never sees half a PNG, and a failed build keeps the old one."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"
    return [colormaps[name](i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def plot_training(path: Path, runs: Sequence[tuple[str, Curve, Curve]]) -> None:
    """One row per run: (name, loss curve, lr curve) against epoch, loss on the left, lr on the right."""
    fig = _figure(10, 2.4 * len(runs) + 0.4)
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for (name, loss, lr), (ax_loss, ax_lr) in zip(runs, axes, strict=True):
        ax_loss.plot(loss[1], loss[2], color="tab:blue", linewidth=1.2)
        ax_lr.plot(lr[1], lr[2], color="tab:orange", linewidth=1.2)
        ax_loss.set(ylabel="loss", title=f"{name}: loss")
        ax_lr.set(ylabel="learning rate", title=f"{name}: learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    _save(fig, path)


def plot_lines(path: Path, curves: Sequence[Curve], xlabel: str, ylabel: str, title: str,
               categories: Sequence[str] | None = None, dashed: Sequence[str] = ()) -> None:
    """Accuracy curves in percent, one line per label; ``categories`` names the x positions 0, 1, ... and a
    label in ``dashed`` is drawn dashed (the supervised baseline against the pretrained methods)."""
    fig = _figure(7.5, 4.0)
    ax = fig.subplots()
    for (label, xs, ys), colour in zip(curves, _colours(len(curves)), strict=True):
        ax.plot(xs, [100 * y for y in ys], marker="o", markersize=4, color=colour, label=label,
                linestyle="--" if label in dashed else "-")
        if len(xs) == 1 or categories:
            ax.annotate(f"{100 * ys[-1]:.1f}", (xs[-1], 100 * ys[-1]), xytext=(4, 4), textcoords="offset points",
                        fontsize=7)
    if categories:
        ax.set_xticks(range(len(categories)), categories)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    _save(fig, path)


def plot_confusion(path: Path, confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix (rows = true class): each row shows where one class's images went."""
    counts = torch.tensor(confusion, dtype=torch.float64)  # (C, C)
    share = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    c = len(classes)
    side = min(max(4.5, 0.55 * c + 2.5), 16)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set_xticks(range(c), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(c), classes, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    for i, j in torch.cartesian_prod(torch.arange(c), torch.arange(c)).tolist() if c <= 20 else []:
        if share[i, j] >= 0.005:  # beyond 20 classes the numbers no longer fit in their cells
            ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    _save(fig, path)


def pca_2d(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, D) features -> (M, 2) coordinates on the two leading principal directions and the (2,) share of
    the variance each explains. ``torch.pca_lowrank`` is randomised, so it runs on a fixed seed; the sign of a
    direction is arbitrary and fixed so that its largest loading is positive: the same data, the same picture."""
    x = features.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0)
    q = min(10, *x.shape)  # a few extra directions make the leading two accurate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, v = torch.pca_lowrank(x, q=q, center=False, niter=6)
    v = v[:, :2]  # (D, 2)
    v = v * torch.sign(v.gather(0, v.abs().argmax(dim=0, keepdim=True)))
    coords = x @ v  # (M, 2)
    total = x.square().sum()
    return coords.float(), (coords.square().sum(dim=0) / total.clamp_min(1e-300)).float()


def plot_embedding(path: Path, coords: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                   explained: torch.Tensor, source: str) -> None:
    """2-D scatter of PCA coordinates, one colour and legend entry per class."""
    fig = _figure(8.0, 6.0)
    ax = fig.subplots()
    size = 12 if coords.shape[0] <= 2000 else 4
    for k, (name, colour) in enumerate(zip(classes, _colours(len(classes)), strict=True)):
        points = coords[labels == k]
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=size, color=colour, alpha=0.7, label=name,
                   linewidths=0)
    ax.set(xlabel=f"PC 1 ({100 * explained[0].item():.1f}% of variance)",
           ylabel=f"PC 2 ({100 * explained[1].item():.1f}% of variance)", title=f"PCA of embeddings: {source}")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, title="class", markerscale=2.0 if size < 10 else 1.0)
    _save(fig, path)
