"""Frozen-network outputs on a whole dataset: encoder features, kNN accuracy (docs/recipe.md#knn-monitor), logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from simclrv2.augment import eval_view
from simclrv2.data import ImageDataset
from simclrv2.eval.knn import extract_features, knn_accuracy
from simclrv2.runtime import resolve_precision


def outputs(forward_module: nn.Module, forward, dataset: ImageDataset, device: torch.device, batch_size: int,
            precision: str, progress: bool = False) -> torch.Tensor:
    """(N, D) float32 outputs of ``forward`` with its module in eval mode (BN running statistics)."""
    was_training = forward_module.training
    forward_module.eval()
    try:
        return extract_features(
            forward,
            dataset.images,
            batch_size=batch_size,
            device=device,
            transform=lambda x: eval_view(x, dataset.image_size),
            autocast_dtype=torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None,
            progress=progress,
        )
    finally:
        forward_module.train(was_training)


def encoder_features(encoder: nn.Module, dataset: ImageDataset, device: torch.device, batch_size: int,
                     precision: str, progress: bool = False) -> torch.Tensor:
    return outputs(encoder, encoder.forward_features, dataset, device, batch_size, precision, progress)


def classifier_logits(model: nn.Module, dataset: ImageDataset, device: torch.device, batch_size: int,
                      precision: str, progress: bool = False) -> torch.Tensor:
    return outputs(model, model, dataset, device, batch_size, precision, progress)


def knn_top1_each(encoder: nn.Module, bank: ImageDataset, query_sets: Sequence[ImageDataset], device: torch.device,
                  *, k: int, temperature: float, batch_size: int, precision: str) -> list[float]:
    """kNN top-1 of each query set against one bank, whose features are computed once."""
    bank_labels = bank.require_labels("the kNN memory bank")
    bank_features = encoder_features(encoder, bank, device, batch_size, precision)
    accuracies = []
    for queries in query_sets:
        query_labels = queries.require_labels("kNN evaluation")
        query_features = encoder_features(encoder, queries, device, batch_size, precision)
        accuracies.append(knn_accuracy(bank_features, bank_labels, query_features, query_labels, bank.num_classes,
                                       k=k, temperature=temperature))
    return accuracies
