"""Stage 1: contrastive pretraining (SimCLRv2 §2-3).

For every step: two augmented views of a batch → encoder + projection head (both views in one forward, so BN
sees 2N images as in the reference) → NT-Xent over all views of all processes → optimiser step at
``lr_at(step)``. Small data and its augmentation stay on the training device; nothing per image runs in Python.
Large image folders and shards are streamed: workers decode each step's images with the crop done at decode
time, and flip, colour, grey and blur run batched on the device as they do in memory. The kNN
monitor scores the encoder on the validation split (streamed images too, decoded batch by batch); the test split
is read once, at the end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from simclrv2 import dist
from simclrv2.augment import draw_crop_randoms, simclr_views, simclr_views_from_crops
from simclrv2.augment.preview import save_augmentation_preview
from simclrv2.checkpoint import load_state
from simclrv2.config import Config
from simclrv2.data.guard import final_evaluation
from simclrv2.data.streaming import BatchSource, CropDataset, StreamData
from simclrv2.logs import get_logger
from simclrv2.losses import nt_xent_loss
from simclrv2.memory import NegativeQueue, ema_update
from simclrv2.models.spec import ModelSpec
from simclrv2.results import StageResult
from simclrv2.runtime import autocast, generator_for, resolve_precision
from simclrv2.stages.engine import Budget, StepTime, Task, fit
from simclrv2.stages.inputs import check_test_classes, seals_test_split, stage_data, test_split_for
from simclrv2.stages.knn_monitor import KnnSets, knn_monitor, knn_sets
from simclrv2.stages.resume import step_seed
from simclrv2.stages.session import Session, open_session

STAGE = "pretrain"
AUGMENTATIONS_FILE = "augmentations.png"  # the report shows it
# Sections whose change makes a run a different run (resuming it would mix two experiments).
IDENTITY_SECTIONS = ("data", "model", "augment", "pretrain")


@seals_test_split
def pretrain(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
             on_step: Callable[[StepTime], None] | None = None) -> StageResult:
    """Runs (or resumes) contrastive pretraining into ``run_dir``; returns where the model and scores are.
    ``on_step`` receives every step's :class:`~simclrv2.stages.engine.StepTime` (benchmarks time the stage so)."""
    cfg, run = config.pretrain, config.run
    session = open_session(STAGE, config, run_dir, resume=resume, overwrite=overwrite,
                           identity_sections=IDENTITY_SECTIONS)
    if session.finished:
        return StageResult.read(session.run_dir)
    # everything that can fail on bad input happens before writing
    data, stream = stage_data(config.data)
    train = data.train
    spec = ModelSpec.from_config(config.model, train.image_size, train.channels)
    budget = Budget.plan(STAGE, len(train), cfg.batch_size, epochs=cfg.epochs,
                         warmup_fraction=cfg.optimizer.warmup_fraction, exact_batch=True)
    knn = knn_sets(data, run.knn_bank_size)
    if knn is not None:  # the final kNN scores the test split
        check_test_classes(config.data, data.labelled.classes)
    session.start()
    device = session.device
    if dist.is_main() and session.state is None and stream is None:  # streamed data has no tensor to pick from
        preview = data.train.images[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:8]]
        save_augmentation_preview(preview, config.augment, session.run_dir / AUGMENTATIONS_FILE, seed=run.seed)

    training = session.training(spec.build_simclr(seed=run.seed), budget.batch_size, cfg.optimizer,
                                global_bn=cfg.global_bn)
    model = training.model
    knn_init = (session.state.get("knn_top1_at_init") if session.state
                else knn_monitor(config, model.encoder, knn, session, STAGE, 0, 0)[0])
    task = Contrastive(
        training, budget, {"kind": "simclr", "architecture": spec.to_dict(), "image_size": train.image_size},
        eval_every=run.knn_every, config=config, session=session, knn=knn, knn_init=knn_init,
        images=data.train.images.to(device, non_blocking=True) if stream is None else None,
        source=_batch_source(stream, config, budget, device) if stream is not None else None,
        memory=_Memory.build(model, cfg, spec, device, session.state, run.precision))
    get_logger().info(
        f"pretraining {spec.describe()} on {train.name} ({len(train)} images, {train.image_size}px) "
        f"for {budget.epochs} epochs of {budget.steps_per_epoch} steps, batch {budget.batch_size}, peak lr "
        f"{training.peak_lr:.3g} ({cfg.optimizer.name}), {device}, {resolve_precision(run.precision, device)}")
    result = fit(task, session, on_step=on_step)
    with final_evaluation():
        read_test = knn is not None and dist.is_main()  # read once
        test = test_split_for(config.data, stream, data.labelled.classes) if read_test else None
        knn_final, knn_test = knn_monitor(config, model.encoder, knn, session, STAGE, budget.epochs, result.step,
                                          test)
    details = {"knn_top1": knn_final, "knn_top1_at_init": knn_init, "pairs_per_s": result.items_per_s,
               "first_loss": result.first_loss, "last_loss": result.last_loss, "architecture": spec.describe()}
    if dist.is_main():
        details["test_knn_top1"] = knn_test
    outcome = session.conclude(task, result.step, details, knn_top1=knn_final, knn_top1_at_init=knn_init)
    if dist.is_main():
        shown = f"kNN top-1 on validation {knn_final:.4f} (random init {knn_init:.4f})" if knn_final is not None else ""
        get_logger().info(f"pretraining done: {shown}; checkpoint {outcome.checkpoint}")
    return outcome


@dataclass(eq=False)
class Contrastive(Task):
    """SimCLRv2's step (§2): two augmented views of every image, one forward pass for both (so BN sees 2N images,
    as in the reference), NT-Xent over the views of every process, and the memory's negatives when it has one."""

    config: Config
    session: Session
    images: torch.Tensor | None  # (N, C, H, W) uint8 on the device; None: streamed crops
    source: BatchSource | None  # streamed data
    memory: _Memory | None
    knn: KnnSets | None
    knn_init: float | None
    unit: ClassVar[str] = "pairs"

    def stream(self, epoch: int, order: torch.Tensor, first: int) -> Iterator[torch.Tensor] | None:
        return self.source(epoch, order, first) if self.source is not None else None

    def inputs(self, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch``: the step's indices into the images in memory, or its streamed (2B, C, S, S) crops."""
        augment, channels_last = self.config.augment, self.config.run.channels_last
        if self.images is not None:
            return simclr_views(self.images[batch], augment, generator, channels_last=channels_last)
        return simclr_views_from_crops(batch, augment, generator, channels_last=channels_last)

    def loss(self, views: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with autocast(self.session.device, self.config.run.precision):
            z1, z2 = self.training.forward(torch.cat(views)).chunk(2)  # (N, D) each
        negatives = self.memory.queue.negatives() if self.memory else None
        gather = dist.gather_with_grad if self.session.distributed else None
        return nt_xent_loss(z1, z2, self.config.pretrain.temperature, gather=gather, extra_negatives=negatives)

    def after_step(self, views: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.memory:
            self.memory.update(*views)

    def evaluate(self, epoch: int, step: int) -> None:
        knn_monitor(self.config, self.training.model.encoder, self.knn, self.session, STAGE, epoch, step)

    def state(self) -> dict[str, Any]:
        return {**(self.memory.state() if self.memory else {}), "knn_top1_at_init": self.knn_init}


def _batch_source(stream: StreamData, config: Config, budget: Budget, device: torch.device) -> BatchSource:
    """Workers decode and crop each step's images; the crop uniforms come from a generator seeded as the engine
    seeds the step, so the views are those the in-memory path draws for the same seed."""
    generator, seed, rank = generator_for(device, 0), config.run.seed, dist.rank()

    def plan(step: int, n: int) -> torch.Tensor:
        generator.manual_seed(step_seed(seed, rank, step))
        return draw_crop_randoms(2 * n, generator)

    aug = config.augment
    dataset = CropDataset(stream.source, stream.image_size, stream.channels, aug.crop_scale, aug.crop_ratio)
    return BatchSource(dataset, budget.local_batch, budget.steps_per_epoch, plan, stream.workers, device)


class _Memory:
    """The optional MoCo-style memory: an EMA copy of encoder + head and a FIFO of its projections."""

    def __init__(self, ema_model, queue: NegativeQueue, momentum: float, device, precision: str, model) -> None:
        self.ema_model, self.queue, self.momentum = ema_model, queue, momentum
        self.device, self.precision, self.model = device, precision, model

    @classmethod
    def build(cls, model, cfg, spec: ModelSpec, device, state, precision: str) -> _Memory | None:
        if cfg.memory_size == 0:
            return None
        ema_model = copy.deepcopy(model).requires_grad_(False)
        queue = NegativeQueue(cfg.memory_size, spec.proj_dim, device=device)
        if state is not None and state.get("memory") is not None:
            queue.load_state_dict(state["memory"])
            load_state(ema_model, state["ema_model"], "the checkpoint's EMA model")
        return cls(ema_model, queue, cfg.memory_momentum, device, precision, model)

    @torch.no_grad()
    def update(self, view1: torch.Tensor, view2: torch.Tensor) -> None:
        """After the optimiser step: EMA of the weights, then the EMA network's projections of this step's
        views join the queue (from every process)."""
        ema_update(self.ema_model, self.model, self.momentum)
        with autocast(self.device, self.precision):
            z = self.ema_model(torch.cat([view1, view2]))
        self.queue.enqueue(dist.all_gather_tensor(F.normalize(z.float(), dim=1)))

    def state(self) -> dict:
        return {"memory": self.queue.state_dict(), "ema_model": self.ema_model.state_dict()}
