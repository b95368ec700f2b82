"""Training a classifier on the engine: what fine-tuning, the supervised baseline and distillation share.

Each of those stages builds the network and the loss of a batch; this module adds the views (crop + flip,
docs/recipe.md#classifier-views), the step budget, validation during training and the final scores: validation,
then the test split, read once at the very end. The optimiser and the rest of the set-up are the session's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simclrv2 import dist
from simclrv2.augment import crop_flip, pad_crop_flip
from simclrv2.data import ImageDataset
from simclrv2.data.guard import final_evaluation
from simclrv2.data.subsets import write_subset_file
from simclrv2.eval.features import classifier_logits
from simclrv2.logs import get_logger
from simclrv2.models import Classifier
from simclrv2.models.spec import ModelSpec
from simclrv2.results import ClassificationScores, EvalRecord, StageResult, metrics_record
from simclrv2.runtime import autocast
from simclrv2.stages.engine import Budget, Task, fit
from simclrv2.stages.inputs import TrainingData, load_test
from simclrv2.stages.session import Session

SUBSET_FILE = "labelled_subset.txt"
# loss(logits (B, C) float32, indices into the training images (B,), augmented views (B, C, H, W)) -> scalar
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ClassifierSetup:
    """What a classifier stage trains: built by the stage, trained by :func:`train_classifier`."""

    model: Classifier
    spec: ModelSpec
    head_layer: int
    classes: tuple[str, ...]
    images: torch.Tensor  # (N, C, H, W) uint8: the images the budget's epochs run over
    loss: BatchLoss
    details: dict[str, Any] = field(default_factory=dict)  # stage facts for result.json
    plain_lr_scale: float = 1.0  # rate factor of the classifier, BN and biases (distillation: 1/τ gradients)
    labelled: tuple[ImageDataset, torch.Tensor] | None = None  # written to SUBSET_FILE
    data_config: Any = None  # the [data] section the test split is read with (default: the session's)
    # the pretraining run the network started from ("": from scratch), kept in the checkpoint: distilling this
    # network starts its student there unless told otherwise
    pretrained_run: str = ""


def weight_movement(model: nn.Module, start: dict[str, torch.Tensor]) -> float:
    """‖w − w₀‖ / ‖w₀‖ over conv and linear weights: how far training moved the network (a fine-tune that
    moves it by 1 % has barely trained)."""
    moved = total = 0.0
    for name, value in model.state_dict().items():
        if name in start:
            moved += (value.detach().float().cpu() - start[name]).square().sum().item()
            total += start[name].square().sum().item()
    return (moved / total) ** 0.5 if total > 0 else 0.0


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if p.ndim > 1}


def train_classifier(session: Session, setup: ClassifierSetup, cfg: Any, data: TrainingData,
                     recorded_config: Any = None) -> StageResult:
    """Trains ``setup.model`` with the stage section ``cfg`` (budget, views, optimiser), then scores it on
    validation and on the test split; writes final.pt and result.json."""
    stage, opt = session.stage, cfg.optimizer
    budget = Budget.plan(stage, setup.images.shape[0], cfg.batch_size, epochs=cfg.epochs, min_steps=cfg.min_steps,
                         warmup_fraction=opt.warmup_fraction)
    files = {SUBSET_FILE: lambda path: write_subset_file(path, *setup.labelled)} if setup.labelled else {}
    session.start(recorded_config, files)
    start_weights = _weights(setup.model)
    # the linear classifier is excluded from weight decay and trust-ratio adaptation, as in the reference
    training = session.training(setup.model, budget.batch_size, opt, global_bn=True, plain=[setup.model.classifier],
                                plain_lr_scale=setup.plain_lr_scale)
    model = training.model
    task = Classification(
        training, budget, {"kind": "classifier", "architecture": setup.spec.to_dict(),
                           "image_size": setup.images.shape[-1], "head_layer": setup.head_layer,
                           "num_classes": len(setup.classes), "classes": list(setup.classes),
                           "pretrained_run": setup.pretrained_run},
        eval_every=cfg.eval_every, session=session, setup=setup, cfg=cfg, images=setup.images.to(session.device),
        val=data.val)
    get_logger().info(f"{stage}: {budget.num_examples} images, {budget.epochs} epochs of {budget.steps_per_epoch} "
                      f"steps ({budget.total_steps} steps), batch {budget.batch_size}, {opt.name} peak lr "
                      f"{training.peak_lr:.3g}")
    fitted = fit(task, session)
    details = {**setup.details, "steps": fitted.step, "epochs": budget.epochs, "first_loss": fitted.first_loss,
               "last_loss": fitted.last_loss, "skipped_steps": fitted.skipped_steps,
               "weight_movement": None if session.state is not None else weight_movement(model, start_weights)}
    val_scores = test_scores = None
    if dist.is_main():
        val_scores = _scores(model, data.val, setup.classes, session) if data.val is not None else None
        with final_evaluation():
            test = load_test(setup.data_config or session.config.data)  # read once, after everything is decided
            test_scores = _scores(model, test, setup.classes, session) if test is not None else None
    outcome = session.conclude(task, fitted.step, details, val=val_scores, test=test_scores)
    if dist.is_main():
        shown = ", ".join(f"{name} top-1 {s.top1:.4f}" for name, s in (("validation", val_scores),
                                                                       ("test", test_scores)) if s is not None)
        moved = details["weight_movement"]
        get_logger().info(f"{stage} done: {shown or 'no labelled evaluation'}"
                          + (f"; weights moved {100 * moved:.1f} %" if moved is not None else "")
                          + f"; checkpoint {outcome.checkpoint}")
    return outcome


@dataclass(eq=False)
class Classification(Task):
    """A classifier stage's step: the stage's views of the batch (crop and flip), logits through the network,
    and the stage's loss of them (cross-entropy, or distillation from a teacher on the same views)."""

    session: Session
    setup: ClassifierSetup
    cfg: Any  # the stage's section: crop, crop_scale, flip_prob
    images: torch.Tensor  # (N, C, H, W) uint8 on the device
    val: ImageDataset | None

    def inputs(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, views): random resized crop + flip (paper §3.1), or pad-4 crop + flip (``crop = "pad"``, and
        ``"auto"`` at <= 32 px)."""
        cfg, images, channels_last = self.cfg, self.images[indices], self.session.run.channels_last
        if cfg.crop == "pad" or (cfg.crop == "auto" and images.shape[-1] <= 32):
            return indices, pad_crop_flip(images, generator, padding=4, flip_prob=cfg.flip_prob,
                                          channels_last=channels_last)
        return indices, crop_flip(images, generator, crop_scale=cfg.crop_scale, flip_prob=cfg.flip_prob,
                                  channels_last=channels_last)

    def loss(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        indices, views = inputs
        with autocast(self.session.device, self.session.run.precision):
            logits = self.training.forward(views)
        return self.setup.loss(logits.float(), indices, views)

    def evaluate(self, epoch: int, step: int) -> None:
        session = self.session
        if self.val is None:
            return
        if dist.is_main():
            top1 = _scores(self.training.model, self.val, self.setup.classes, session).top1
            session.log.write(**metrics_record(EvalRecord(step, epoch, top1)), stage=session.stage)
            get_logger().info(f"{session.stage}: validation top-1 after {epoch} epochs: {top1:.4f}")
        dist.barrier()


def _scores(model: nn.Module, dataset: ImageDataset, classes: tuple[str, ...], session: Session
            ) -> ClassificationScores:
    run = session.run
    logits = classifier_logits(model, dataset, session.device, run.eval_batch_size, run.precision)
    return ClassificationScores.from_predictions(logits.argmax(1).cpu(), dataset.labels, classes)
