"""Classification metrics: top-1, confusion matrix, per-class recall and a JSON-ready report.

Every function accepts CPU or device tensors and returns plain Python values, so results can go straight into
``metrics.jsonl`` / ``result.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from simclrv2.errors import SimCLRv2Error


def _as_predictions(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) predicted classes from (N, C) logits or (N,) predictions, checked against (N,) labels."""
    if labels.dim() != 1:
        raise SimCLRv2Error(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    if logits_or_preds.dim() == 2:
        preds = logits_or_preds.argmax(dim=1)
    elif logits_or_preds.dim() == 1:
        if logits_or_preds.is_floating_point():
            raise SimCLRv2Error("1-D predictions must be integer class indices; pass (N, C) logits otherwise")
        preds = logits_or_preds
    else:
        raise SimCLRv2Error(
            f"expected (N, C) logits or (N,) predictions, got shape {tuple(logits_or_preds.shape)}"
        )
    if preds.shape[0] != labels.shape[0]:
        raise SimCLRv2Error(f"{preds.shape[0]} predictions but {labels.shape[0]} labels: pass one per sample")
    if preds.shape[0] == 0:
        raise SimCLRv2Error("no samples to score: the evaluation split is empty")
    return preds.to(labels.device)


def accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]; accepts (N, C) logits or (N,) integer predictions."""
    preds = _as_predictions(logits_or_preds, labels)
    return (preds == labels).double().mean().item()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts on the CPU: rows are the true class, columns the predicted class."""
    preds = _as_predictions(preds, labels).long().cpu()
    labels = labels.long().cpu()
    if num_classes < 1:
        raise SimCLRv2Error(f"num_classes must be >= 1, got {num_classes}")
    for name, values in (("labels", labels), ("predictions", preds)):
        if values.min().item() < 0 or values.max().item() >= num_classes:
            raise SimCLRv2Error(
                f"{name} must lie in [0, {num_classes}), got values from {values.min().item()} to "
                f"{values.max().item()}: check num_classes"
            )
    flat = labels * num_classes + preds  # (N,) one cell index per sample
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class (diagonal / row sum). A class with no samples gets ``nan``: it has no accuracy,
    and 0 would wrongly pull down a mean; use ``math.isnan`` to skip it."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise SimCLRv2Error(f"a confusion matrix must be square (C, C), got shape {tuple(confusion.shape)}")
    support = confusion.sum(dim=1).tolist()
    correct = confusion.diagonal().tolist()
    return [c / s if s > 0 else math.nan for c, s in zip(correct, support, strict=True)]


def classification_report(
    preds: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> dict[str, Any]:
    """A JSON-serialisable summary: ``top1``, ``mean_per_class`` (mean recall over classes with samples),
    ``per_class`` {class name: recall, or None for a class with no samples (JSON has no nan)},
    ``confusion_matrix`` (rows true, columns predicted), ``classes`` (its row order) and ``num_samples``.

    ``preds`` may also be (N, C) logits."""
    names = [str(name) for name in classes]
    if len(set(names)) != len(names):
        raise SimCLRv2Error("class names must be unique for a per-class report")
    confusion = confusion_matrix(preds, labels, len(names))
    recalls = per_class_accuracy(confusion)
    present = [r for r in recalls if not math.isnan(r)]
    total = int(confusion.sum().item())
    return {
        "top1": confusion.diagonal().sum().item() / total,
        "mean_per_class": sum(present) / len(present),
        "per_class": {name: (None if math.isnan(r) else r) for name, r in zip(names, recalls, strict=True)},
        "confusion_matrix": confusion.tolist(),
        "classes": names,
        "num_samples": total,
    }
