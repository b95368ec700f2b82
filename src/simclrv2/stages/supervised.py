"""The supervised-only baseline: the same architecture trained from scratch on the same labelled subset with
the same budget (epochs, batch, augmentation). Every SimCLRv2 claim is measured against it."""

from __future__ import annotations

from pathlib import Path

import torch

from simclrv2.architecture import Architecture
from simclrv2.config import Config
from simclrv2.models import Classifier
from simclrv2.stages.classifier_stage import StageResult, StageSetup, run_classifier_stage
from simclrv2.stages.finetune import cross_entropy_on, labelled_subset, recipe_for
from simclrv2.stages.inputs import load_test

STAGE = "supervised"
IDENTITY_SECTIONS = ("data", "model", "finetune", "supervised")


def supervised(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Trains the ``[model]`` architecture from scratch on ``finetune.labels`` (head layer ``finetune.head_layer``
    kept, so the network is the fine-tuned one's, only not pretrained)."""
    cfg = config.supervised

    def prepare(device: torch.device) -> StageSetup:
        train, indices = labelled_subset(config)
        architecture = Architecture.from_config(config.model, train.image_size, train.channels)
        head_layer = min(config.finetune.head_layer, architecture.head_layers)
        model = Classifier.from_simclr(architecture.build_simclr(seed=config.run.seed), head_layer,
                                       train.num_classes)
        labels = train.labels[indices].to(device)
        return StageSetup(
            model=model, images=train.images[indices], batch_loss=cross_entropy_on(labels),
            recipe=recipe_for(config, len(indices), len(train), base_lr=cfg.base_lr, lr_scaling=cfg.lr_scaling,
                              weight_decay=cfg.weight_decay, warmup_fraction=cfg.warmup_fraction),
            test=load_test(config.data), architecture=architecture, head_layer=head_layer, classes=train.classes,
            labelled=(train, indices),
            summary={"labels": config.finetune.labels, "num_labelled": len(indices), "head_layer": head_layer,
                     "architecture": architecture.describe()},
        )

    return run_classifier_stage(STAGE, config, run_dir, resume, overwrite, IDENTITY_SECTIONS, prepare)
