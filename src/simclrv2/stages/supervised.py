"""The supervised-only baseline: the fine-tuned network (same head layer) trained from scratch on the same
labelled subset, with its own recipe for training from scratch (``[supervised]``), chosen with the same search
effort as fine-tuning's. Every SimCLRv2 claim is measured against it."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from simclrv2.config import Config
from simclrv2.models.spec import ModelSpec
from simclrv2.results import StageResult
from simclrv2.stages.classify import ClassifierSetup, train_classifier
from simclrv2.stages.finetune import labelled_data, subset_images
from simclrv2.stages.inputs import seals_test_split
from simclrv2.stages.session import open_session

STAGE = "supervised"
IDENTITY_SECTIONS = ("data", "model", "finetune", "supervised")


@seals_test_split
def supervised(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Trains the ``[model]`` network from scratch on ``finetune.labels`` (head layer ``finetune.head_layer``)."""
    session = open_session(STAGE, config, run_dir, resume=resume, overwrite=overwrite,
                           identity_sections=IDENTITY_SECTIONS)
    if session.finished:
        return StageResult.read(session.run_dir)
    data, indices, stream = labelled_data(config.data, config.finetune.labels, config.run.seed, STAGE)
    labelled = data.labelled
    spec = ModelSpec.from_config(config.model, labelled.image_size, labelled.channels)
    head_layer = min(config.finetune.head_layer, spec.head_layers)
    labels = labelled.labels[indices].to(session.device)
    images, listed = subset_images(labelled, indices)
    setup = ClassifierSetup(
        model=spec.build_classifier(head_layer, labelled.num_classes, seed=config.run.seed), spec=spec,
        head_layer=head_layer, classes=labelled.classes, images=images,
        loss=lambda logits, index, views: F.cross_entropy(logits, labels[index]), labelled=listed, stream=stream,
        details={"labels": config.finetune.labels, "num_labelled": len(indices), "head_layer": head_layer,
                 "architecture": spec.describe()},
    )
    return train_classifier(session, setup, config.supervised, data)
