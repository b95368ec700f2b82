"""The report's figures, drawn with matplotlib's Agg canvas on plain ``Figure`` objects.

No pyplot: it keeps global state (the current figure, the backend) that would leak into a notebook that
imports this module. matplotlib is imported inside the functions, so the package works without it.
Accuracies arrive as fractions in [0, 1] and are drawn in percent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from simclrv2.errors import SimCLRv2Error

DPI = 110


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
    """Atomic: a reader never sees half a PNG, and an interrupted build leaves the old one. (Not mkstemp: its
    0600 mode would hide the page's images from anyone the user shares the folder with.)"""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


def _running_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (shorter at the start), so the trend shows through step noise."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_training(path: Path, epochs: Sequence[float], losses: Sequence[float], lr_epochs: Sequence[float],
                  lrs: Sequence[float], stage: str) -> None:
    """Loss (raw and smoothed) and learning rate against epoch, side by side."""
    fig = _figure(10, 3.6)
    ax_loss, ax_lr = fig.subplots(1, 2)
    if len(losses) >= 20:  # per-step noise hides the trend: draw the records faintly under a running mean
        window = max(len(losses) // 25, 2)
        ax_loss.plot(epochs, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="logged")
        ax_loss.plot(epochs, _running_mean(losses, window), color="tab:blue", linewidth=1.8,
                     label=f"mean of {window} records")
        ax_loss.legend(loc="upper right", fontsize=8)
    elif epochs:
        ax_loss.plot(epochs, losses, color="tab:blue", marker="o", markersize=3, linewidth=1.5)
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{stage} loss")
    if lr_epochs:
        ax_lr.plot(lr_epochs, lrs, color="tab:orange", linewidth=1.5)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_knn(path: Path, epochs: Sequence[float], accuracies: Sequence[float]) -> None:
    """kNN top-1 against epoch; the epoch-0 point (the random encoder) is labelled as such."""
    fig = _figure(6.5, 3.8)
    ax = fig.subplots()
    percent = [100 * a for a in accuracies]
    ax.plot(epochs, percent, marker="o", markersize=4, color="tab:green")
    if epochs and epochs[0] == 0:
        below = percent[0] > 12  # the curve usually climbs from here, so the space under the point is free
        ax.annotate(f"random init\n{percent[0]:.1f}%", (epochs[0], percent[0]), xytext=(12, -28 if below else 12),
                    textcoords="offset points", fontsize=8, arrowprops={"arrowstyle": "-", "color": "0.4"})
    if len(epochs) > 1:
        ax.annotate(f"{percent[-1]:.1f}%", (epochs[-1], percent[-1]), xytext=(-10, -16),
                    textcoords="offset points", fontsize=8, ha="right")
    ax.set(xlabel="epoch (0 = random initialisation)", ylabel="kNN top-1 (%)",
           title="kNN accuracy during pretraining")
    ax.set_ylim(0, min(100, max(percent) + 10) if percent else 100)
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_accuracy_bars(path: Path, methods: Sequence[str], fractions: Sequence[str],
                       table: dict[tuple[str, str], float]) -> None:
    """Grouped bars: one group per label fraction, one bar per method; absent cells leave a gap."""
    fig = _figure(max(6.5, 1.0 + 0.45 * len(methods) * len(fractions)), 4.2)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, (method, colour) in enumerate(zip(methods, _colours(len(methods)), strict=True)):
        offset = (i - (len(methods) - 1) / 2) * width
        xs = [j + offset for j, f in enumerate(fractions) if (method, f) in table]
        ys = [100 * table[method, f] for f in fractions if (method, f) in table]
        bars = ax.bar(xs, ys, width=width * 0.92, color=colour, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(fractions)), [f"{f} labels" for f in fractions])
    ax.set(ylabel="test top-1 (%)", title="accuracy by label fraction")
    top = max(table.values(), default=1.0) * 100
    ax.set_ylim(0, top + 15)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    _save(fig, path)


def plot_eval_curves(path: Path, curves: Sequence[tuple[str, str, Sequence[float], Sequence[float]]]) -> None:
    """Test top-1 against epoch, one line per run: (method, label fraction, epochs, accuracies). A method
    keeps its colour and a label fraction its line style, so the eye can compare either way."""
    methods = list(dict.fromkeys(c[0] for c in curves))
    fractions = list(dict.fromkeys(c[1] for c in curves))
    colours = dict(zip(methods, _colours(len(methods)), strict=True))
    styles = ["-", "--", ":", "-."]
    fig = _figure(7.5, 4.0)
    ax = fig.subplots()
    for method, fraction, epochs, accuracies in curves:
        label = f"{method} ({fraction})" if fraction else method
        ax.plot(epochs, [100 * a for a in accuracies], marker="o" if len(epochs) <= 40 else None, markersize=3,
                color=colours[method],
                linestyle=styles[fractions.index(fraction) % len(styles)], label=label)
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy during training")
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    _save(fig, path)


def plot_confusion(path: Path, matrix: torch.Tensor, classes: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix (rows = true class): each row shows where one class's images went."""
    counts = matrix.double()
    totals = counts.sum(dim=1, keepdim=True)
    normalised = torch.where(totals > 0, counts / totals.clamp_min(1), torch.zeros_like(counts))  # (C, C)
    c = len(classes)
    side = min(max(4.5, 0.55 * c + 2.5), 16)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set_xticks(range(c), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(c), classes, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if c <= 20:  # beyond that the numbers no longer fit in their cells
        for i in range(c):
            for j in range(c):
                value = normalised[i, j].item()
                if value >= 0.005:
                    ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if value > 0.5 else "black")
    _save(fig, path)


def plot_embedding(path: Path, coords: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                   explained: torch.Tensor, source: str) -> None:
    """2-D scatter of (M, 2) PCA coordinates, one colour and legend entry per class."""
    fig = _figure(8.0, 6.0)
    ax = fig.subplots()
    size = 12 if coords.shape[0] <= 2000 else 4
    for k, (name, colour) in enumerate(zip(classes, _colours(len(classes)), strict=True)):
        points = coords[labels == k]
        if points.shape[0]:
            ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=size, color=colour, alpha=0.7,
                       label=name, linewidths=0)
    ax.set(xlabel=f"PC 1 ({100 * explained[0].item():.1f}% of variance)",
           ylabel=f"PC 2 ({100 * explained[1].item():.1f}% of variance)",
           title=f"PCA of embeddings: {source}" if source else "PCA of embeddings")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, title="class", markerscale=2.0 if size < 10 else 1.0,
               ncols=1 if len(classes) <= 25 else 2)
    _save(fig, path)
