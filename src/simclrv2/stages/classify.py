"""Training a classifier on the engine: what fine-tuning, the supervised baseline and distillation share.

Each of those stages builds the network and the loss of a batch; this module adds the views (crop + flip,
docs/recipe.md#classifier-views), the optimiser, the step budget, validation in training, final scores: validation, then
the test split, read once at the very end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simclrv2 import dist
from simclrv2.augment import crop_flip, pad_crop_flip
from simclrv2.checkpoint import load_state
from simclrv2.data import ImageDataset
from simclrv2.data.guard import final_evaluation
from simclrv2.data.subsets import write_subset_file
from simclrv2.eval.features import classifier_logits
from simclrv2.logs import get_logger
from simclrv2.models import Classifier
from simclrv2.models.global_bn import convert_to_global_bn
from simclrv2.models.spec import ModelSpec
from simclrv2.optim import build_optimizer, param_groups, scaled_learning_rate
from simclrv2.results import ClassificationScores, EvalRecord, StageResult, metrics_record
from simclrv2.runtime import autocast, prepare_model
from simclrv2.stages.engine import Budget, Session, Task, fit
from simclrv2.stages.inputs import TrainingData, load_test

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


def make_views(cfg: Any, image_size: int, channels_last: bool
               ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The stage's training views: random resized crop + flip (paper §3.1), or pad-4 crop + flip (``crop = "pad"``, and
    ``"auto"`` at <= 32 px)."""
    if cfg.crop == "pad" or (cfg.crop == "auto" and image_size <= 32):
        return lambda x, g: pad_crop_flip(x, g, padding=4, flip_prob=cfg.flip_prob, channels_last=channels_last)
    return lambda x, g: crop_flip(x, g, crop_scale=cfg.crop_scale, flip_prob=cfg.flip_prob,
                                  channels_last=channels_last)


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
    run, device, stage = session.run, session.device, session.stage
    opt = cfg.optimizer
    budget = Budget.plan(stage, setup.images.shape[0], cfg.batch_size, epochs=cfg.epochs, min_steps=cfg.min_steps,
                         warmup_fraction=opt.warmup_fraction)
    files = {SUBSET_FILE: lambda path: write_subset_file(path, *setup.labelled)} if setup.labelled else {}
    session.start(recorded_config, files)
    model = setup.model
    start_weights = _weights(model)
    if session.state is not None:
        load_state(model, session.state["model"], f"{session.checkpoints}/last.pt")
    if session.distributed:
        model = convert_to_global_bn(model)
    model = prepare_model(model, device, run.channels_last)
    peak_lr = scaled_learning_rate(opt.base_lr, budget.batch_size, opt.lr_scaling)
    # the linear classifier is excluded from weight decay and trust-ratio adaptation, as in the reference
    groups = param_groups(model, opt.weight_decay, plain=[model.classifier])
    groups[1]["lr_scale"] = setup.plain_lr_scale
    optimizer = build_optimizer(groups, opt.name, peak_lr, opt.weight_decay, opt.momentum)
    forward = dist.wrap_ddp(model, device) if session.distributed else model
    forward = torch.compile(forward) if run.compile else forward
    images = setup.images.to(device)
    views_of = make_views(cfg, images.shape[-1], run.channels_last)
    val = data.val

    def train_step(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        views = views_of(images[indices], generator)
        with autocast(device, run.precision):
            logits = forward(views)
        return setup.loss(logits.float(), indices, views)

    def evaluate(epoch: int, step: int) -> float | None:
        if val is None:
            return None
        top1 = None
        if dist.is_main():
            top1 = _scores(model, val, setup.classes, session).top1
            session.log.write(**metrics_record(EvalRecord(step, epoch, top1)), stage=stage)
            get_logger().info(f"{stage}: validation top-1 after {epoch} epochs: {top1:.4f}")
        dist.barrier()
        return top1

    get_logger().info(f"{stage}: {images.shape[0]} images, {budget.epochs} epochs of {budget.steps_per_epoch} "
                      f"steps ({budget.total_steps} steps), batch {budget.batch_size}, {opt.name} peak lr "
                      f"{peak_lr:.3g}")
    task = Task(stage=stage, model=model, optimizer=optimizer, budget=budget, peak_lr=peak_lr,
                num_examples=images.shape[0], train_step=train_step, evaluate=evaluate, eval_every=cfg.eval_every,
                checkpoint_content={"kind": "classifier", "architecture": setup.spec.to_dict(),
                                    "image_size": setup.images.shape[-1],
                                    "head_layer": setup.head_layer, "num_classes": len(setup.classes),
                                    "classes": list(setup.classes), "pretrained_run": setup.pretrained_run})
    fitted = fit(task, session)
    details = {**setup.details, "steps": fitted.step, "epochs": budget.epochs, "first_loss": fitted.first_loss,
               "last_loss": fitted.last_loss, "skipped_steps": fitted.skipped_steps,
               "weight_movement": None if session.state is not None else weight_movement(model, start_weights),
               "provenance": session.provenance}
    val_scores = test_scores = None
    if dist.is_main():
        val_scores = _scores(model, val, setup.classes, session) if val is not None else None
        with final_evaluation():
            test = load_test(setup.data_config or session.config.data)  # read once, after everything is decided
            test_scores = _scores(model, test, setup.classes, session) if test is not None else None
    session.save("final.pt", task, fitted.step, final=True)
    checkpoint = session.finish()
    outcome = StageResult(stage=stage, run_dir=str(session.run_dir), checkpoint=str(checkpoint), val=val_scores,
                          test=test_scores, details=details)
    if dist.is_main():
        outcome.write(session.run_dir)
        shown = ", ".join(f"{name} top-1 {s.top1:.4f}" for name, s in (("validation", val_scores),
                                                                       ("test", test_scores)) if s is not None)
        moved = details["weight_movement"]
        get_logger().info(f"{stage} done: {shown or 'no labelled evaluation'}"
                          + (f"; weights moved {100 * moved:.1f} %" if moved is not None else "")
                          + f"; checkpoint {checkpoint}")
    dist.barrier()
    return outcome


def _scores(model: nn.Module, dataset: ImageDataset, classes: tuple[str, ...], session: Session
            ) -> ClassificationScores:
    run = session.run
    logits = classifier_logits(model, dataset, session.device, run.eval_batch_size, run.precision)
    return ClassificationScores.from_predictions(logits.argmax(1).cpu(), dataset.labels, classes)
