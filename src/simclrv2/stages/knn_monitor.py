"""Pretraining's kNN monitor (docs/recipe.md#knn-monitor): the encoder's kNN top-1 on the validation split
against a bank of ``run.knn_bank_size`` labelled training images outside validation.

In memory and streamed, the bank and the queries are the same images (the validation split and the bank's draw
are functions of the labels alone); streamed, they are decoded batch by batch at each evaluation, so the monitor
holds their features, never the collection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simclrv2 import dist
from simclrv2.config import Config
from simclrv2.data.streaming.images import StreamedImages
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.features import Images, knn_top1_each
from simclrv2.logs import get_logger
from simclrv2.results import KnnRecord, metrics_record
from simclrv2.stages.inputs import TrainingData
from simclrv2.stages.session import Session

BANK_SEED = 0
NO_VALIDATION = "kNN monitor off: no labelled validation split (data.val_size = 0 or unlabeled data)"


@dataclass(frozen=True)
class KnnSets:
    """The kNN monitor's memory bank (labelled training images outside validation) and its queries."""

    bank: Images
    queries: Images


def bank_draw(pool: torch.Tensor, bank_size: int) -> torch.Tensor:
    """``bank_size`` of the ``pool`` indices (0 or more than the pool: all), drawn with a fixed seed, so every
    run of a collection, streamed or in memory, scores on the same bank."""
    if bank_size and bank_size < len(pool):
        return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(BANK_SEED))[:bank_size]]
    return pool


def knn_sets(data: TrainingData, bank_size: int) -> KnnSets | None:
    """Bank and queries, in memory or streamed; None (and one line saying so) without a labelled validation
    split. Streamed, ``bank_size`` 0 ("all") is refused: the bank's features would grow with the collection."""
    if bank_size == 0 and isinstance(data.labelled, StreamedImages):
        raise SimCLRv2Error(f"run.knn_bank_size = 0 keeps the features of all {len(data.pool_indices)} labelled "
                            "images of a streamed collection in memory; set run.knn_bank_size to a count (default "
                            "10000)")
    if data.val is None:
        get_logger().info(NO_VALIDATION)
        return None
    return KnnSets(data.labelled.subset(bank_draw(data.pool_indices, bank_size)), data.val)


def knn_monitor(config: Config, encoder: torch.nn.Module, knn: KnnSets | None, session: Session, stage: str,
                epoch: int, step: int, test: Images | None = None) -> tuple[float | None, float | None]:
    """(validation, test) kNN top-1 of the encoder; test only when given, against the same bank features.
    Logged on rank 0; the other processes wait at the barrier and get Nones."""
    scores: dict[str, float] = {}
    if knn is not None and dist.is_main():
        run = config.run
        queries = {"val": knn.queries, **({"test": test} if test is not None else {})}
        top1 = knn_top1_each(encoder, knn.bank, list(queries.values()), session.device, k=run.knn_k,
                             temperature=run.knn_temperature, batch_size=run.eval_batch_size, precision=run.precision)
        scores = dict(zip(queries, top1, strict=True))
        session.log.write(**metrics_record(KnnRecord(step, epoch, scores["val"])), stage=stage)
        get_logger().info(f"kNN top-1 on validation after {epoch} epochs: {scores['val']:.4f}")
    if knn is not None:
        dist.barrier()
    return scores.get("val"), scores.get("test")

