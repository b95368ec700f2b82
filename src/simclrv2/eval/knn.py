"""The kNN monitor (docs/recipe.md#knn-monitor; standard in peers, not in the paper): cosine kNN with a weighted vote.

For a query q and its k most cosine-similar training features with similarities s_i and labels y_i, the
score of class c is  Σ_{i: y_i = c} exp(s_i / τ)  and the prediction is the class with the largest score
(k = 200, τ = 0.1 by default). Also here: ``extract_features``, turning uint8 images into cached features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from simclrv2.errors import SimCLRv2Error

_MAX_SIMILARITIES = 2**26  # 256 MB of float32 similarities per query chunk


def _check_bank(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                num_classes: int) -> None:
    if train_features.dim() != 2 or query_features.dim() != 2:
        raise SimCLRv2Error(
            f"kNN features must be (N, D) matrices, got {tuple(train_features.shape)} (train) and "
            f"{tuple(query_features.shape)} (queries)"
        )
    if train_features.shape[1] != query_features.shape[1]:
        raise SimCLRv2Error(
            f"train features have {train_features.shape[1]} dimensions but queries "
            f"{query_features.shape[1]}: extract both with the same encoder"
        )
    if train_features.shape[0] == 0:
        raise SimCLRv2Error("the kNN memory bank is empty: give it at least one labelled image")
    if train_labels.shape != (train_features.shape[0],):
        raise SimCLRv2Error(
            f"expected {train_features.shape[0]} train labels, got shape {tuple(train_labels.shape)}"
        )
    if train_labels.min().item() < 0 or train_labels.max().item() >= num_classes:
        raise SimCLRv2Error(f"train labels must lie in [0, {num_classes}): check num_classes")


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(Q,) predicted labels by a weighted vote of the k nearest training features (cosine similarity).

    Features are L2-normalised here, so raw encoder outputs can be passed. Runs on the device of
    ``train_features``; queries are processed ``chunk_size`` at a time (fewer when the bank is so large that
    the (chunk, N_train) similarity matrix would pass _MAX_SIMILARITIES), which bounds memory and leaves
    the result unchanged. k larger than the bank uses the whole bank. Ties between classes go to the lowest
    class index."""
    _check_bank(train_features, train_labels, query_features, num_classes)
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise SimCLRv2Error(
            f"kNN needs k >= 1, temperature > 0 and chunk_size >= 1, got {k}, {temperature}, {chunk_size}"
        )
    device = train_features.device
    bank = F.normalize(train_features.float(), dim=1)  # (N, D)
    bank_labels = train_labels.to(device).long()
    k = min(k, bank.shape[0])
    chunk_size = max(1, min(chunk_size, _MAX_SIMILARITIES // bank.shape[0]))
    preds = []
    for start in range(0, query_features.shape[0], chunk_size):
        queries = F.normalize(query_features[start : start + chunk_size].to(device).float(), dim=1)
        sims, nearest = (queries @ bank.T).topk(k, dim=1)  # (Qc, k) each
        # exp((s - s_max) / τ) differs from exp(s / τ) by a per-query factor, so the vote is unchanged,
        # and it cannot overflow for a small τ.
        weights = ((sims - sims[:, :1]) / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, device=device)  # (Qc, C)
        votes.scatter_add_(1, bank_labels[nearest], weights)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(preds)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict`` on labelled queries."""
    if query_labels.shape != (query_features.shape[0],):
        raise SimCLRv2Error(
            f"expected {query_features.shape[0]} query labels, got shape {tuple(query_labels.shape)}"
        )
    if query_labels.numel() == 0:
        raise SimCLRv2Error("no kNN queries to score: the evaluation split is empty")
    preds = knn_predict(train_features, train_labels, query_features, num_classes, k=k,
                        temperature=temperature)
    return (preds.cpu() == query_labels.cpu()).double().mean().item()


@torch.no_grad()
def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(N, D) float32 CPU features of uint8 (N, C, H, W) images, ``batch_size`` at a time (see
    :func:`batch_features`)."""
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise SimCLRv2Error(
            f"extract_features expects uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise SimCLRv2Error("no images to extract features from")
    if batch_size < 1:
        raise SimCLRv2Error(f"batch_size must be >= 1, got {batch_size}")
    batches = (images[start : start + batch_size] for start in range(0, images.shape[0], batch_size))
    return batch_features(forward, batches, device, transform, autocast_dtype, progress,
                          total=math.ceil(images.shape[0] / batch_size))


@torch.no_grad()
def batch_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    device: torch.device | str = "cpu",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    total: int | None = None,
) -> torch.Tensor:
    """(N, D) float32 CPU features of uint8 (B, C, H, W) batches: slices of images in memory, or streamed
    images decoded batch by batch, so no more than a batch of images is ever held here.

    Each batch is moved to ``device`` as uint8 (4x less traffic than float) and only there scaled to [0, 1]
    (docs/recipe.md#augmentation: no normalisation); ``transform`` (e.g. the evaluation centre crop) is then
    applied, and ``forward`` runs under autocast when ``autocast_dtype`` is given. The caller sets eval
    mode."""
    device = torch.device(device)
    outputs = []
    for batch in tqdm(batches, total=total, desc="features", unit="batch", disable=not progress, leave=False):
        if batch.dim() != 4 or batch.dtype != torch.uint8:
            raise SimCLRv2Error(
                f"feature extraction expects uint8 (B, C, H, W) images, got {batch.dtype} {tuple(batch.shape)}"
            )
        x = batch.to(device, non_blocking=True).float().div_(255)
        if transform is not None:
            x = transform(x)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features = forward(x)
        if features.dim() != 2 or features.shape[0] != x.shape[0]:
            raise SimCLRv2Error(
                f"the feature function must return (B, D) for a batch of {x.shape[0]}, got "
                f"{tuple(features.shape)}: pass the pooled encoder output (forward_features)"
            )
        outputs.append(features.float().cpu())
    if not outputs:
        raise SimCLRv2Error("no images to extract features from")
    return torch.cat(outputs)
