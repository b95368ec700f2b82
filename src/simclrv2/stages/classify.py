"""Training a classifier on the engine: what fine-tuning, the supervised baseline and distillation share.

Each of those stages builds the network and the loss of a batch; this module adds the views (crop + flip,
docs/recipe.md#classifier-views), the step budget, validation during training and the final scores: validation,
then the test split, read once at the very end. The optimiser and the rest of the set-up are the session's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simclrv2 import dist
from simclrv2.augment import crop_flip, draw_crop_randoms, flip_crops, pad_crop_flip
from simclrv2.data import ImageDataset
from simclrv2.data.guard import final_evaluation
from simclrv2.data.streaming import BatchSource, CropDataset
from simclrv2.data.streaming.images import SquareDataset, StreamedImages, WholeImages
from simclrv2.data.subsets import write_subset_file
from simclrv2.eval.features import Images, classifier_logits
from simclrv2.logs import get_logger
from simclrv2.models import Classifier
from simclrv2.models.spec import ModelSpec
from simclrv2.results import ClassificationScores, EvalRecord, StageResult, metrics_record
from simclrv2.runtime import autocast, generator_for
from simclrv2.stages.engine import Budget, StepTime, Task, fit
from simclrv2.stages.inputs import TrainingData, check_test_classes, test_split_for
from simclrv2.stages.resume import step_seed
from simclrv2.stages.session import Session

SUBSET_FILE = "labelled_subset.txt"
CROP_RATIO = (3 / 4, 4 / 3)  # of the random resized crop (crop_flip's default)
# loss(logits (B, C) float32, indices into the training images (B,), augmented views (B, C, H, W)) -> scalar
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ClassifierSetup:
    """What a classifier stage trains: built by the stage, trained by :func:`train_classifier`."""

    model: Classifier
    spec: ModelSpec
    head_layer: int
    classes: tuple[str, ...]
    images: torch.Tensor | StreamedImages  # (N, C, H, W) uint8, or streamed: what the budget's epochs run over
    loss: BatchLoss
    details: dict[str, Any] = field(default_factory=dict)  # stage facts for result.json
    plain_lr_scale: float = 1.0  # rate factor of the classifier, BN and biases (distillation: 1/τ gradients)
    labelled: tuple[ImageDataset, torch.Tensor] | None = None  # written to SUBSET_FILE
    data_config: Any = None  # the [data] section the test split is read with (default: the session's)
    stream: Any = None  # the StreamData the images are streamed from (None: in memory)
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
                     recorded_config: Any = None, on_step: Callable[[StepTime], None] | None = None) -> StageResult:
    """Trains ``setup.model`` with the stage section ``cfg`` (budget, views, optimiser), then scores it on
    validation and on the test split; writes final.pt and result.json. ``on_step`` receives every step's
    :class:`~simclrv2.stages.engine.StepTime`, as in pretraining."""
    stage, opt = session.stage, cfg.optimizer
    streamed = isinstance(setup.images, StreamedImages)
    image_size = setup.images.image_size if streamed else setup.images.shape[-1]
    budget = Budget.plan(stage, len(setup.images), cfg.batch_size, epochs=cfg.epochs, min_steps=cfg.min_steps,
                         warmup_fraction=opt.warmup_fraction)
    check_test_classes(setup.data_config or session.config.data, setup.classes)
    files = {SUBSET_FILE: lambda path: write_subset_file(path, *setup.labelled)} if setup.labelled else {}
    session.start(recorded_config, files)
    start_weights = _weights(setup.model)
    # the linear classifier is excluded from weight decay and trust-ratio adaptation, as in the reference
    training = session.training(setup.model, budget.batch_size, opt, global_bn=True, plain=[setup.model.classifier],
                                plain_lr_scale=setup.plain_lr_scale)
    model = training.model
    task = Classification(
        training, budget, {"kind": "classifier", "architecture": setup.spec.to_dict(),
                           "image_size": image_size, "head_layer": setup.head_layer,
                           "num_classes": len(setup.classes), "classes": list(setup.classes),
                           "pretrained_run": setup.pretrained_run},
        eval_every=cfg.eval_every, session=session, setup=setup, cfg=cfg, val=data.val,
        images=None if streamed else setup.images.to(session.device),
        source=_batch_source(setup.images, cfg, budget, session) if streamed else None,
        pads=_pads(cfg, image_size))
    get_logger().info(f"{stage}: {budget.num_examples} images, {budget.epochs} epochs of {budget.steps_per_epoch} "
                      f"steps ({budget.total_steps} steps), batch {budget.batch_size}, {opt.name} peak lr "
                      f"{training.peak_lr:.3g}")
    fitted = fit(task, session, on_step=on_step)
    details = {**setup.details, "steps": fitted.step, "epochs": budget.epochs, "first_loss": fitted.first_loss,
               "last_loss": fitted.last_loss, "skipped_steps": fitted.skipped_steps,
               "weight_movement": None if session.state is not None else weight_movement(model, start_weights)}
    val_scores = test_scores = None
    if dist.is_main():
        val_scores = _scores(model, data.val, setup.classes, session) if data.val is not None else None
        with final_evaluation():
            # read once, after everything is decided
            test = test_split_for(setup.data_config or session.config.data, setup.stream, setup.classes)
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
    images: torch.Tensor | None  # (N, C, H, W) uint8 on the device; None: streamed
    source: BatchSource | None  # streamed: each step's decoded views
    pads: bool  # the pad-4 crop (else the random resized crop)
    val: ImageDataset | StreamedImages | None

    def stream(self, epoch: int, order: torch.Tensor, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]] | None:
        """Streamed: each step's (indices, views decoded by the workers), indices on the device as in memory."""
        if self.source is None:
            return None
        b, device = self.budget.local_batch, self.session.device
        steps, crops = range(first, self.budget.steps_per_epoch), self.source(epoch, order, first)
        return ((order[i * b:(i + 1) * b].to(device), views) for i, views in zip(steps, crops, strict=True))

    def inputs(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, views): random resized crop + flip (paper §3.1), or pad-4 crop + flip (``crop = "pad"``, and
        ``"auto"`` at <= 32 px). Streamed, the random resized crop was cut at decode time with this step's draws."""
        cfg, channels_last = self.cfg, self.session.run.channels_last
        indices, images = batch if self.images is None else (batch, self.images[batch])
        if self.pads:
            return indices, pad_crop_flip(images, generator, padding=4, flip_prob=cfg.flip_prob,
                                          channels_last=channels_last)
        if self.images is None:
            return indices, flip_crops(images, generator, cfg.flip_prob, channels_last=channels_last)
        return indices, crop_flip(images, generator, crop_scale=cfg.crop_scale, flip_prob=cfg.flip_prob,
                                  channels_last=channels_last, crop_ratio=CROP_RATIO)

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


def _pads(cfg: Any, image_size: int) -> bool:
    return cfg.crop == "pad" or (cfg.crop == "auto" and image_size <= 32)


def _batch_source(images: StreamedImages, cfg: Any, budget: Budget, session: Session) -> BatchSource:
    """Workers decode each step's images: the random resized crop cut at decode time from uniforms drawn with a
    generator seeded as the engine seeds the step (so the boxes are those the in-memory path draws), or the whole
    centred square for the pad-4 crop, which follows on the device."""
    device, seed, rank = session.device, session.run.seed, dist.rank()
    squares = SquareDataset(images.selection(), images.image_size, images.channels)
    if _pads(cfg, images.image_size):
        return BatchSource(WholeImages(squares), budget.local_batch, budget.steps_per_epoch,
                           lambda step, n: torch.zeros(n, 0), images.workers, device)
    generator = generator_for(device, 0)

    def plan(step: int, n: int) -> torch.Tensor:
        generator.manual_seed(step_seed(seed, rank, step))
        return draw_crop_randoms(n, generator)

    dataset = CropDataset(images.selection(), images.image_size, images.channels, cfg.crop_scale, CROP_RATIO)
    return BatchSource(dataset, budget.local_batch, budget.steps_per_epoch, plan, images.workers, device)


def _scores(model: nn.Module, dataset: Images, classes: tuple[str, ...], session: Session
            ) -> ClassificationScores:
    run = session.run
    logits = classifier_logits(model, dataset, session.device, run.eval_batch_size, run.precision)
    return ClassificationScores.from_predictions(logits.argmax(1).cpu(), dataset.labels, classes)
