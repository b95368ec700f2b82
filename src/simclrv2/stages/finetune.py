"""Stage 2: fine-tune a pretrained network on a labelled subset, from projection-head layer j (SimCLRv2 §2).

The classifier sits on head layer ``finetune.head_layer`` (1 by default: SimCLRv2's finding is that keeping
the first head layer helps most with few labels); the rest of the head is discarded, and the whole network
trains on the labelled subset, drawn outside the validation split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from simclrv2.checkpoint import read_pretrained
from simclrv2.config import Config
from simclrv2.data import ImageDataset
from simclrv2.data.streaming import StreamData
from simclrv2.data.streaming.images import StreamedImages
from simclrv2.errors import SimCLRv2Error
from simclrv2.models import Classifier
from simclrv2.results import StageResult
from simclrv2.stages.classify import ClassifierSetup, train_classifier
from simclrv2.stages.engine import StepTime
from simclrv2.stages.inputs import TrainingData, data_for_network, seals_test_split, stage_data
from simclrv2.stages.session import open_session

STAGE = "finetune"
IDENTITY_SECTIONS = ("data", "finetune")


def labelled_data(data_config, labels: str, seed: int, stage: str
                  ) -> tuple[TrainingData, torch.Tensor, StreamData | None]:
    """The training data (in memory or streamed, as ``data.stream`` chooses), the indices (into
    ``data.labelled``) of the stage's labelled subset, and the stream it is read from (None: in memory)."""
    data, stream = stage_data(data_config)
    data.labelled.require_classes(stage)
    return data, data.labelled_subset(labels, seed), stream


def subset_images(labelled: ImageDataset | StreamedImages, indices: torch.Tensor
                  ) -> tuple[torch.Tensor | StreamedImages, tuple[ImageDataset | StreamedImages, torch.Tensor]]:
    """What a classifier stage trains on (the subset's images, or their streamed selection) and what its
    subset file lists (streamed: only the subset's ids are built)."""
    if isinstance(labelled, StreamedImages):
        images = labelled.subset(indices)
        return images, (images, torch.arange(len(images)))
    return labelled.images[indices], (labelled, indices)


@seals_test_split
def finetune(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
             on_step: Callable[[StepTime], None] | None = None) -> StageResult:
    """Fine-tunes ``finetune.pretrained`` on ``finetune.labels`` from head layer ``finetune.head_layer``;
    ``on_step`` times every step (:class:`~simclrv2.stages.engine.StepTime`), as in pretraining."""
    cfg = config.finetune
    session = open_session(STAGE, config, run_dir, resume=resume, overwrite=overwrite,
                           identity_sections=IDENTITY_SECTIONS)
    if session.finished:
        return StageResult.read(session.run_dir)
    spec, pretrained, payload = read_pretrained(cfg.pretrained)
    if cfg.head_layer > spec.head_layers:
        raise SimCLRv2Error(f"finetune.head_layer = {cfg.head_layer} but the pretrained head has {spec.head_layers} "
                            f"layers; choose 0..{spec.head_layers}")
    data_config = data_for_network(config.data, spec.in_channels, payload["image_size"])
    data, indices, stream = labelled_data(data_config, cfg.labels, config.run.seed, STAGE)
    labelled = data.labelled
    spec.check_data(labelled.channels, f"the pretrained model {cfg.pretrained}")
    spec.check_model_options(config.model, labelled.image_size, f"the pretrained model {cfg.pretrained}")
    labels = labelled.labels[indices].to(session.device)
    images, listed = subset_images(labelled, indices)
    setup = ClassifierSetup(
        model=Classifier.from_simclr(pretrained, cfg.head_layer, labelled.num_classes), spec=spec,
        head_layer=cfg.head_layer, classes=labelled.classes, images=images,
        loss=lambda logits, index, views: F.cross_entropy(logits, labels[index]), labelled=listed, stream=stream,
        details={"labels": cfg.labels, "num_labelled": len(indices), "head_layer": cfg.head_layer,
                 "pretrained": str(cfg.pretrained), "architecture": spec.describe()},
        data_config=data_config, pretrained_run=str(Path(cfg.pretrained).resolve()),
    )
    return train_classifier(session, setup, cfg, data, dataclasses.replace(config, model=spec.model_config()),
                            on_step=on_step)
