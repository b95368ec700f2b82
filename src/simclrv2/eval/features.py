"""Frozen-network outputs on a whole dataset: encoder features, kNN accuracy (docs/recipe.md#knn-monitor), logits.
The dataset is in memory (:class:`~simclrv2.data.ImageDataset`) or streamed
(:class:`~simclrv2.data.streaming.images.StreamedImages`): both give their images batch by batch."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

from simclrv2.augment import eval_view
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.knn import batch_features, knn_accuracy
from simclrv2.runtime import resolve_precision


class Images(Protocol):
    """Square uint8 images read batch by batch, with their labels (what evaluation needs of a dataset)."""

    @property
    def image_size(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...

    def require_labels(self, purpose: str) -> torch.Tensor: ...


def outputs(forward_module: nn.Module, forward, dataset: Images, device: torch.device, batch_size: int,
            precision: str, progress: bool = False) -> torch.Tensor:
    """(N, D) float32 outputs of ``forward`` on the evaluation view of each image, with its module in eval mode
    (BN running statistics)."""
    if batch_size < 1:
        raise SimCLRv2Error(f"batch_size must be >= 1, got {batch_size}")
    was_training = forward_module.training
    forward_module.eval()
    try:
        return batch_features(
            forward,
            dataset.batches(batch_size),
            device=device,
            transform=lambda x: eval_view(x, dataset.image_size),
            autocast_dtype=torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None,
            progress=progress,
            total=math.ceil(len(dataset) / batch_size),
        )
    finally:
        forward_module.train(was_training)


def encoder_features(encoder: nn.Module, dataset: Images, device: torch.device, batch_size: int,
                     precision: str, progress: bool = False) -> torch.Tensor:
    return outputs(encoder, encoder.forward_features, dataset, device, batch_size, precision, progress)


def classifier_logits(model: nn.Module, dataset: Images, device: torch.device, batch_size: int,
                      precision: str, progress: bool = False) -> torch.Tensor:
    return outputs(model, model, dataset, device, batch_size, precision, progress)


def knn_top1_each(encoder: nn.Module, bank: Images, query_sets: Sequence[Images], device: torch.device,
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
