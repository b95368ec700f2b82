"""Stage 1: contrastive pretraining (SimCLRv2 §2-3).

For every step: two augmented views of a batch → encoder + projection head (both views in one forward, so BN
sees 2N images as in the reference) → NT-Xent over all views of all processes → LARS step at ``lr_at(step)``.
Data and augmentation stay on the training device; nothing per image runs in Python.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from simclrv2 import dist
from simclrv2.architecture import Architecture, load_state
from simclrv2.augment import simclr_views
from simclrv2.checkpoint import (
    MetricsLog,
    atomic_write_text,
    check_run_dir,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
)
from simclrv2.config import Config, config_to_dict, to_toml
from simclrv2.errors import Interrupted, SimCLRv2Error
from simclrv2.losses import nt_xent_loss
from simclrv2.memory import NegativeQueue, ema_update
from simclrv2.models.global_bn import convert_to_global_bn
from simclrv2.optim import LARS, lr_at, param_groups, scaled_learning_rate, set_lr, warmup_steps_for
from simclrv2.runtime import (
    autocast,
    generator_for,
    prepare_model,
    resolve_device,
    resolve_precision,
    set_threads,
)
from simclrv2.stages.features import knn_top1
from simclrv2.stages.inputs import labelled_train, load_test, load_train
from simclrv2.stages.resume import check_resumable, step_seed

STAGE = "pretrain"
# Sections whose change makes a run a different run (resuming it would mix two experiments).
IDENTITY_SECTIONS = ("data", "model", "augment", "pretrain")


@dataclass(frozen=True)
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    knn_top1: float | None
    knn_top1_at_init: float | None
    pairs_per_s: float


@dataclass(frozen=True)
class Schedule:
    """Steps and learning rates of a run, all derived from the config and the data size."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    local_batch: int

    @classmethod
    def plan(cls, cfg, num_images: int, world: int) -> Schedule:
        if cfg.batch_size % world:
            raise SimCLRv2Error(f"pretrain.batch_size = {cfg.batch_size} must be divisible by the {world} processes")
        if cfg.batch_size > num_images:
            raise SimCLRv2Error(
                f"pretrain.batch_size = {cfg.batch_size} is larger than the {num_images} training images; "
                "lower pretrain.batch_size or use more data"
            )
        steps_per_epoch = num_images // cfg.batch_size
        total = steps_per_epoch * cfg.epochs
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=warmup_steps_for(total, cfg.warmup_fraction),
            peak_lr=scaled_learning_rate(cfg.base_lr, cfg.batch_size, cfg.lr_scaling),
            local_batch=cfg.batch_size // world,
        )


def pretrain(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> PretrainResult:
    """Runs (or resumes) contrastive pretraining into ``run_dir``; returns where the model and scores are."""
    cfg, run = config.pretrain, config.run
    set_threads(run.threads)
    distributed = dist.init_distributed(resolve_device(run.device).type)
    device = resolve_device(run.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    main = dist.is_main()

    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    start_step, state = 0, None
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if resume and (checkpoint_dir / "final.pt").is_file():
        payload = load_checkpoint(checkpoint_dir / "final.pt")
        check_resumable(payload, config, IDENTITY_SECTIONS, STAGE)
        return _finished_result(run_dir, payload)
    if resume and (checkpoint_dir / "last.pt").is_file():
        state = load_checkpoint(checkpoint_dir / "last.pt")
        check_resumable(state, config, IDENTITY_SECTIONS, STAGE)
        start_step = int(state["step"])

    # Everything that can fail on bad input happens before the run directory is touched.
    train = load_train(config.data)
    bank, test = _knn_sets(config, train)
    architecture = Architecture.from_config(config.model, train.image_size, train.channels)
    schedule = Schedule.plan(cfg, len(train), dist.world_size())
    if main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        atomic_write_text(run_dir / "config.toml", to_toml(config))
    dist.barrier()
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main)

    model = architecture.build_simclr(seed=run.seed)
    if state is not None:
        load_state(model, state["model"], f"{run_dir}/checkpoints/last.pt")
    if distributed and cfg.global_bn:
        model = convert_to_global_bn(model)
    model = prepare_model(model, device, run.channels_last)
    optimizer = LARS(param_groups(model, cfg.weight_decay), lr=schedule.peak_lr, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    ema_model, queue = _memory(model, cfg, architecture, device, state)
    trained = (
        dist.wrap_ddp(model, device) if distributed else model
    )
    forward = torch.compile(trained) if run.compile else trained

    if main:
        print(f"pretraining {architecture.describe()} on {train.name} ({len(train)} images, {train.image_size}px) "
              f"for {cfg.epochs} epochs of {schedule.steps_per_epoch} steps, batch {cfg.batch_size}, "
              f"peak lr {schedule.peak_lr:.3g}, {device}, {resolve_precision(run.precision, device)}", flush=True)
    knn = _KnnMonitor(config, bank, test, device, log)
    knn_init = knn.evaluate(model.encoder, epoch=0, step=0) if state is None else state.get("knn_top1_at_init")

    images = train.images.to(device, non_blocking=True)
    generator = generator_for(device, run.seed)
    gather = dist.gather_with_grad if distributed else None
    step = start_step
    pairs_per_s = 0.0
    model.train()
    try:
        for epoch in range(start_step // schedule.steps_per_epoch, cfg.epochs):
            order = dist.shard_indices(len(train), epoch, run.seed, batch_size=schedule.local_batch).to(device)
            first = step - epoch * schedule.steps_per_epoch
            bar = tqdm(range(first, schedule.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (run.progress and main), leave=False, dynamic_ncols=True)
            tick, tick_step = time.perf_counter(), step
            for i in bar:
                generator.manual_seed(step_seed(run.seed, dist.rank(), step))
                batch = images[order[i * schedule.local_batch : (i + 1) * schedule.local_batch]]
                view1, view2 = simclr_views(batch, config.augment, generator, channels_last=run.channels_last)
                lr = lr_at(step, schedule.total_steps, schedule.peak_lr, schedule.warmup_steps)
                set_lr(optimizer, lr)
                with autocast(device, run.precision):
                    z1, z2 = forward(torch.cat([view1, view2])).chunk(2)  # (N, D) each
                negatives = queue.negatives() if queue is not None else None
                loss = nt_xent_loss(z1, z2, cfg.temperature, gather=gather, extra_negatives=negatives)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if queue is not None:
                    _update_memory(ema_model, model, queue, view1, view2, cfg.memory_momentum, device, run.precision)
                step += 1
                if step % run.log_every == 0 or i == schedule.steps_per_epoch - 1:
                    elapsed = time.perf_counter() - tick
                    pairs_per_s = (step - tick_step) * cfg.batch_size / max(elapsed, 1e-9)
                    tick, tick_step = time.perf_counter(), step
                    loss_value = dist.all_reduce_mean(loss.detach()).item()
                    if not torch.isfinite(torch.tensor(loss_value)):
                        raise SimCLRv2Error(f"loss became {loss_value} at step {step}; lower pretrain.base_lr "
                                            "or use run.precision = 'fp32'")
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", pairs_s=f"{pairs_per_s:.0f}")
                    log.write(event="train", stage=STAGE, epoch=epoch + (i + 1) / schedule.steps_per_epoch,
                              step=step, loss=loss_value, lr=lr, pairs_per_s=pairs_per_s)
            bar.close()
            done = epoch + 1
            if main:
                print(f"epoch {done}/{cfg.epochs}: loss {loss_value:.4f}, {pairs_per_s:.0f} pairs/s", flush=True)
            if run.knn_every and done % run.knn_every == 0 and done < cfg.epochs:
                knn.evaluate(model.encoder, epoch=done, step=step)
            if done % run.checkpoint_every == 0 and done < cfg.epochs:
                _save(checkpoint_dir / "last.pt", model, optimizer, queue, ema_model, architecture, config,
                      step, knn_init, main)
    except KeyboardInterrupt:
        _save(checkpoint_dir / "last.pt", model, optimizer, queue, ema_model, architecture, config, step,
              knn_init, main)
        raise Interrupted(f"interrupted at step {step}; checkpoint saved, continue with --resume") from None

    final_knn = knn.evaluate(model.encoder, epoch=cfg.epochs, step=step)
    final = checkpoint_dir / "final.pt"
    _save(final, model, None, None, None, architecture, config, step, knn_init, main,
          knn_top1=final_knn, pairs_per_s=pairs_per_s)
    if main:
        (checkpoint_dir / "last.pt").unlink(missing_ok=True)
        summary = f"kNN top-1 {final_knn:.4f} (random init {knn_init:.4f})" if final_knn is not None else ""
        print(f"pretraining done: {summary}; checkpoint {final}", flush=True)
    dist.barrier()
    return PretrainResult(run_dir, final, final_knn, knn_init, pairs_per_s)


def _knn_sets(config: Config, train):
    """Memory bank (labelled training images) and queries (test split) of the kNN monitor, if labelled."""
    try:
        labelled = labelled_train(config.data, train)
        test = load_test(config.data)
        test.require_labels("kNN evaluation")
    except SimCLRv2Error as exc:
        print(f"kNN monitor off: {exc}", flush=True)
        return None, None
    bank_size = config.run.knn_bank_size
    if bank_size and bank_size < len(labelled):
        chosen = torch.randperm(len(labelled), generator=torch.Generator().manual_seed(0))[:bank_size]
        labelled = labelled.subset(chosen)
    return labelled, test


class _KnnMonitor:
    """Evaluates and logs kNN top-1 on rank 0; the other processes wait at the barrier."""

    def __init__(self, config: Config, bank, test, device: torch.device, log: MetricsLog) -> None:
        self.run, self.bank, self.test, self.device, self.log = config.run, bank, test, device, log

    def evaluate(self, encoder: nn.Module, epoch: int, step: int) -> float | None:
        if self.bank is None:
            return None
        accuracy = None
        if dist.is_main():
            accuracy = knn_top1(encoder, self.bank, self.test, self.device, k=self.run.knn_k,
                                temperature=self.run.knn_temperature, batch_size=self.run.eval_batch_size,
                                precision=self.run.precision)
            self.log.write(event="knn", stage=STAGE, epoch=epoch, step=step, knn_top1=accuracy)
            print(f"kNN top-1 after {epoch} epochs: {accuracy:.4f}", flush=True)
        dist.barrier()
        return accuracy


def _memory(model, cfg, architecture, device, state):
    """The optional MoCo-style memory: an EMA copy of encoder + head and a FIFO of its projections."""
    if cfg.memory_size == 0:
        return None, None
    ema_model = copy.deepcopy(model).requires_grad_(False)
    queue = NegativeQueue(cfg.memory_size, architecture.proj_dim, device=device)
    if state is not None and state.get("memory") is not None:
        queue.load_state_dict(state["memory"])
        load_state(ema_model, state["ema_model"], "the checkpoint's EMA model")
    return ema_model, queue


@torch.no_grad()
def _update_memory(ema_model, model, queue, view1, view2, momentum, device, precision) -> None:
    ema_update(ema_model, model, momentum)
    with autocast(device, precision):
        z = ema_model(torch.cat([view1, view2]))
    queue.enqueue(dist.all_gather_tensor(F.normalize(z.float(), dim=1)))


def _save(path, model, optimizer, queue, ema_model, architecture, config, step, knn_init, main, **extra) -> None:
    if not main:
        return
    save_checkpoint(
        path,
        stage=STAGE,
        kind="simclr",
        architecture=architecture.to_dict(),
        config=config_to_dict(config),
        model=model.state_dict(),
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        memory=queue.state_dict() if queue is not None else None,
        ema_model=ema_model.state_dict() if ema_model is not None else None,
        step=step,
        knn_top1_at_init=knn_init,
        **extra,
    )


def _finished_result(run_dir: Path, payload) -> PretrainResult:
    if dist.is_main():
        print(f"pretraining already finished in {run_dir}; reusing it", flush=True)
    return PretrainResult(run_dir, run_dir / "checkpoints" / "final.pt", payload.get("knn_top1"),
                          payload.get("knn_top1_at_init"), float(payload.get("pairs_per_s") or 0.0))
