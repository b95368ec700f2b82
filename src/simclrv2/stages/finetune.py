"""Stage 2: fine-tune a pretrained network on a labelled subset, from projection-head layer j (SimCLRv2 §2).

The classifier sits on head layer ``finetune.head_layer`` (1 by default: SimCLRv2's finding is that keeping
the first head layer helps most with few labels); the rest of the head is discarded. The whole network is
trained with crop + flip, LARS and no weight decay or warmup (SPEC).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from simclrv2.architecture import Architecture, load_state
from simclrv2.checkpoint import load_checkpoint
from simclrv2.config import Config
from simclrv2.data import ImageDataset
from simclrv2.data.subsets import subset_indices
from simclrv2.errors import SimCLRv2Error
from simclrv2.models import Classifier
from simclrv2.stages.classifier_stage import StageResult, StageSetup, run_classifier_stage
from simclrv2.stages.classifier_training import Recipe
from simclrv2.stages.inputs import labelled_train, load_test, load_train

STAGE = "finetune"
IDENTITY_SECTIONS = ("data", "finetune")


def labelled_subset(config: Config) -> tuple[ImageDataset, torch.Tensor]:
    """The training images and the indices of the labelled ones (the stage writes them to its run directory)."""
    train = labelled_train(config.data, load_train(config.data))
    train.require_labels(f"{STAGE} (dataset {train.name})")
    return train, subset_indices(train, config.finetune.labels, config.run.seed)


def load_pretrained(path: str) -> tuple[Architecture, torch.nn.Module]:
    """The SimCLR model (encoder + projection head) of a pretraining run directory or checkpoint."""
    if not path:
        raise SimCLRv2Error("no pretrained model given: set finetune.pretrained to a pretraining run directory")
    payload = load_checkpoint(path)
    if payload.get("kind") != "simclr":
        raise SimCLRv2Error(f"{path} is a {payload.get('stage')!r} checkpoint, not a pretraining run")
    architecture = Architecture.from_dict(payload["architecture"])
    model = architecture.build_simclr()
    load_state(model, payload["model"], str(path))
    return architecture, model


def recipe_for(config: Config, num_labelled: int, num_train: int, *, base_lr: float, lr_scaling: str,
               weight_decay: float, warmup_fraction: float) -> Recipe:
    cfg = config.finetune
    return Recipe(
        epochs=cfg.epochs_for(num_labelled, num_train), batch_size=cfg.batch_size, base_lr=base_lr,
        lr_scaling=lr_scaling, warmup_fraction=warmup_fraction, weight_decay=weight_decay,
        momentum=cfg.momentum, crop_scale=cfg.crop_scale, flip_prob=cfg.flip_prob, eval_every=cfg.eval_every,
    )


def cross_entropy_on(labels: torch.Tensor):
    """The labelled loss: targets looked up by the batch's indices into the training images."""
    return lambda logits, index, views: F.cross_entropy(logits, labels[index])


def finetune(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Fine-tunes ``finetune.pretrained`` on ``finetune.labels`` from head layer ``finetune.head_layer``."""
    cfg = config.finetune

    def prepare(device: torch.device) -> StageSetup:
        architecture, pretrained = load_pretrained(cfg.pretrained)
        if cfg.head_layer > architecture.head_layers:
            raise SimCLRv2Error(
                f"finetune.head_layer = {cfg.head_layer} but the pretrained head has {architecture.head_layers} "
                f"layers; choose 0..{architecture.head_layers}"
            )
        train, indices = labelled_subset(config)
        architecture.check_data(train.channels, f"the pretrained model {cfg.pretrained}")
        architecture.check_model_options(config.model, train.image_size, f"the pretrained model {cfg.pretrained}")
        model = Classifier.from_simclr(pretrained, cfg.head_layer, train.num_classes)
        labels = train.labels[indices].to(device)
        return StageSetup(
            model=model, images=train.images[indices], batch_loss=cross_entropy_on(labels),
            recipe=recipe_for(config, len(indices), len(train), base_lr=cfg.base_lr, lr_scaling=cfg.lr_scaling,
                              weight_decay=cfg.weight_decay, warmup_fraction=0.0),
            test=load_test(config.data), architecture=architecture, head_layer=cfg.head_layer,
            classes=train.classes, labelled=(train, indices),
            recorded_config=dataclasses.replace(config, model=architecture.model_config()),
            summary={"labels": cfg.labels, "num_labelled": len(indices), "head_layer": cfg.head_layer,
                     "pretrained": str(cfg.pretrained), "architecture": architecture.describe()},
        )

    return run_classifier_stage(STAGE, config, run_dir, resume, overwrite, IDENTITY_SECTIONS, prepare)
