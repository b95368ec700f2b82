"""Stage 3: distillation on unlabeled images (SimCLRv2 §2.3).

A frozen fine-tuned teacher labels every training image with softened predictions P_T(y|x; τ), computed on
the **same augmented view** the student sees; the student minimises −Σ_y P_T log P_S (plus, optionally,
(1 − α)·CE on the labelled subset). The student has the teacher's architecture (self-distillation) or the
``[model]`` one (big-to-small), from scratch or from its own pretrained weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from simclrv2.architecture import Architecture, build_classifier, classifier_architecture, load_state
from simclrv2.checkpoint import load_checkpoint
from simclrv2.config import Config
from simclrv2.data.subsets import subset_indices
from simclrv2.errors import SimCLRv2Error
from simclrv2.losses import distillation_loss
from simclrv2.models import Classifier
from simclrv2.runtime import autocast, prepare_model
from simclrv2.stages.classifier_stage import StageResult, StageSetup, run_classifier_stage
from simclrv2.stages.classifier_training import Recipe
from simclrv2.stages.finetune import load_pretrained
from simclrv2.stages.inputs import labelled_train, load_test, load_train

STAGE = "distill"
IDENTITY_SECTIONS = ("data", "model", "distill")


def load_teacher(path: str, device: torch.device, channels_last: bool) -> tuple[Architecture, int, torch.nn.Module]:
    """The frozen teacher in eval mode: BN uses running statistics, so its targets do not depend on the batch."""
    if not path:
        raise SimCLRv2Error("no teacher given: set distill.teacher to a fine-tuned run directory")
    payload = load_checkpoint(path)
    architecture, head_layer, num_classes = classifier_architecture(payload)
    teacher = build_classifier(architecture, head_layer, num_classes)
    load_state(teacher, payload["model"], str(path))
    teacher = prepare_model(teacher, device, channels_last).eval().requires_grad_(False)
    return architecture, head_layer, teacher


def student_for(config: Config, teacher_architecture: Architecture, head_layer: int, image_size: int,
                channels: int, num_classes: int) -> tuple[Architecture, Classifier]:
    cfg = config.distill
    if cfg.student == "teacher":
        architecture = teacher_architecture
    else:
        architecture = Architecture.from_config(config.model, image_size, channels)
    head_layer = min(head_layer, architecture.head_layers)
    if cfg.student_init == "pretrained":
        pretrained_architecture, simclr = load_pretrained(cfg.student_pretrained)
        if pretrained_architecture != architecture:
            raise SimCLRv2Error(
                f"distill.student_pretrained is a {pretrained_architecture.describe()} but the student is a "
                f"{architecture.describe()}; pass the student's own pretraining run"
            )
        return architecture, Classifier.from_simclr(simclr, head_layer, num_classes)
    return architecture, build_classifier(architecture, head_layer, num_classes, seed=config.run.seed)


def distill(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Distils ``distill.teacher`` into a student on all training images (labels unused unless alpha < 1)."""
    cfg = config.distill

    def prepare(device: torch.device) -> StageSetup:
        teacher_architecture, head_layer, teacher = load_teacher(cfg.teacher, device, config.run.channels_last)
        train = load_train(config.data)
        num_classes = teacher.classifier.out_features
        labelled = labelled_train(config.data, train) if train.labels is None else train
        if num_classes != labelled.num_classes:
            raise SimCLRv2Error(f"the teacher predicts {num_classes} classes but {labelled.name} has "
                                f"{labelled.num_classes}; distil on the data the teacher was fine-tuned for")
        teacher_architecture.check_data(train.channels, f"the teacher {cfg.teacher}")
        architecture, student = student_for(config, teacher_architecture, head_layer, train.image_size,
                                            train.channels, num_classes)
        temperature = cfg.temperature_for(self_distillation=architecture == teacher_architecture)
        targets = torch.full((len(train),), -1, dtype=torch.long)  # -1: unlabeled for the (1 - alpha) term
        if cfg.alpha < 1:
            if train.labels is None:
                raise SimCLRv2Error("distill.alpha < 1 needs labels on the training split; set distill.alpha = 1")
            chosen = subset_indices(train, config.finetune.labels, config.run.seed)
            targets[chosen] = train.labels[chosen]
        targets = targets.to(device)
        precision = config.run.precision

        def batch_loss(logits: torch.Tensor, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(device, precision):
                teacher_logits = teacher(views)
            loss = distillation_loss(logits, teacher_logits.float(), temperature)
            if cfg.alpha < 1:
                labels = targets[index]
                known = labels >= 0
                if known.any():
                    loss = cfg.alpha * loss + (1 - cfg.alpha) * F.cross_entropy(logits[known], labels[known])
                else:
                    loss = cfg.alpha * loss
            return loss

        recipe = Recipe(epochs=cfg.epochs, batch_size=cfg.batch_size, base_lr=cfg.base_lr,
                        lr_scaling=cfg.lr_scaling, warmup_fraction=cfg.warmup_fraction,
                        weight_decay=cfg.weight_decay, momentum=cfg.momentum, crop_scale=cfg.crop_scale,
                        flip_prob=cfg.flip_prob, eval_every=cfg.eval_every, plain_lr_scale=min(1.0, temperature))
        return StageSetup(
            model=student, images=train.images, batch_loss=batch_loss, recipe=recipe, test=load_test(config.data),
            architecture=architecture, head_layer=head_layer, classes=labelled.classes,
            summary={"teacher": str(cfg.teacher), "teacher_architecture": teacher_architecture.describe(),
                     "architecture": architecture.describe(), "temperature": temperature, "alpha": cfg.alpha,
                     "student_init": cfg.student_init},
        )

    return run_classifier_stage(STAGE, config, run_dir, resume, overwrite, IDENTITY_SECTIONS, prepare)
