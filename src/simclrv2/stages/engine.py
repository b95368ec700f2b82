"""The one training engine every stage runs on.

A stage builds a :class:`Task` (model, optimiser, step budget and a ``train_step`` that maps a batch of example
indices, or the batch its ``batches`` source yields for that step, to a loss) and hands it to :func:`fit`; the
engine owns the rest, once: per-step seeds and sharding, the learning rate as a function of the step, backward
and optimiser step, the NaN/inf guard, logging, checkpoints (per epoch, every N steps or M minutes, and on
SIGTERM/SIGINT/SIGUSR1) and the periodic evaluation. :class:`Session` owns the run directory: resume or reuse,
and nothing written before the inputs load.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from simclrv2 import dist
from simclrv2.atomic import atomic_write_text
from simclrv2.checkpoint import (
    MetricsLog,
    check_run_dir,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    save_checkpoint,
)
from simclrv2.config import RunConfig, config_to_dict, to_toml
from simclrv2.errors import Interrupted, SimCLRv2Error
from simclrv2.logs import get_logger, show_progress
from simclrv2.optim import lr_at, set_lr, warmup_steps_for
from simclrv2.provenance import provenance
from simclrv2.results import TrainRecord, metrics_record
from simclrv2.runtime import generator_for, resolve_device, set_threads
from simclrv2.stages.resume import check_resumable, step_seed
from simclrv2.tensorboard import tensorboard_sink

# fewer optimiser steps than this and a stage cannot be expected to train: it says so
MIN_SENSIBLE_STEPS = 100
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


@dataclass(frozen=True)
class Budget:
    """A stage's step budget, derived from the data: epochs over ``num_examples`` raised to ``min_steps``."""

    batch_size: int  # global
    local_batch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def plan(cls, stage: str, num_examples: int, batch_size: int, *, epochs: int, min_steps: int = 0,
             warmup_fraction: float = 0.0, exact_batch: bool = False) -> Budget:
        """``exact_batch`` (pretraining: the batch is the recipe) refuses a batch the data cannot fill;
        otherwise the batch is capped at the data size, so 100 labels still make a batch."""
        world = dist.world_size()
        if exact_batch:
            if batch_size % world:
                raise SimCLRv2Error(f"{stage}.batch_size = {batch_size} must be divisible by the {world} processes")
            if batch_size > num_examples:
                raise SimCLRv2Error(f"{stage}.batch_size = {batch_size} is larger than the {num_examples} training "
                                    f"images; lower {stage}.batch_size or use more data")
            batch = batch_size
        else:
            batch = min(batch_size, num_examples)
            batch -= batch % world
            if batch < world:
                raise SimCLRv2Error(f"{num_examples} training images are too few for {world} processes")
        steps_per_epoch = max(1, num_examples // batch)
        epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
        total = steps_per_epoch * epochs
        if total < MIN_SENSIBLE_STEPS:
            get_logger().warning(f"warning: {stage} takes only {total} optimiser steps ({epochs} epochs of "
                                 f"{steps_per_epoch}); it may not train: raise {stage}.epochs or {stage}.min_steps")
        return cls(batch, batch // world, steps_per_epoch, epochs, total, warmup_steps_for(total, warmup_fraction))


@dataclass
class Task:
    """What a stage trains. ``train_step(indices, generator) -> loss`` draws its own views from the generator
    (seeded per step by the engine) and computes the forward pass and loss of one local batch.

    With ``batches`` (streamed data), ``batches(epoch, order, first)`` iterates what ``train_step`` gets in place
    of the indices for steps ``first …`` of the epoch, given the epoch's (per-process, CPU) order: the engine
    still owns the order and the step, so resume and sharding are the same on both paths."""

    stage: str
    model: nn.Module  # the plain module whose weights are checkpointed (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    budget: Budget
    peak_lr: float
    num_examples: int
    train_step: Callable[[Any, torch.Generator], torch.Tensor]
    checkpoint_content: dict[str, Any]  # what rebuilds the model: kind, architecture, head layer, classes...
    after_step: Callable[[], None] | None = None  # e.g. the EMA memory update
    evaluate: Callable[[int, int], Any] | None = None  # (epoch, step), every ``eval_every`` epochs but the last
    eval_every: int = 0
    extra_state: Callable[[], dict[str, Any]] = dict  # stage state for last.pt (memory queue, EMA model)
    unit: str = "images"  # throughput unit in logs
    batches: Callable[[int, torch.Tensor, int], Iterator[Any]] | None = None


@dataclass(frozen=True)
class FitResult:
    step: int
    first_loss: float | None  # mean over the first logging window
    last_loss: float | None  # mean over the last logging window
    skipped_steps: int
    items_per_s: float


@dataclass
class Session:
    """One stage's run directory and device: opened before inputs load, written only by :meth:`start`."""

    stage: str
    run_dir: Path
    config: Any
    run: RunConfig
    device: torch.device
    distributed: bool
    resume: bool
    overwrite: bool
    state: dict[str, Any] | None = None  # last.pt of an interrupted run
    finished: dict[str, Any] | None = None  # final.pt of a finished run (resume reuses it)
    log: MetricsLog = field(init=False)
    provenance: dict[str, Any] = field(init=False)  # code, libraries, device, precision, command line

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def start_step(self) -> int:
        return int(self.state["step"]) if self.state is not None else 0

    def start(self, recorded_config: Any = None, files: dict[str, Callable[[Path], None]] | None = None) -> None:
        """Creates (or reopens) the run directory and writes config.toml; on resume, drops metric records past
        the checkpoint's step so the log reads as one uninterrupted run."""
        if dist.is_main():
            prepare_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
            for name, write in (files or {}).items():
                write(self.run_dir / name)
            atomic_write_text(self.run_dir / "config.toml", to_toml(recorded_config or self.config))
            if self.resume:
                _truncate_metrics(self.run_dir / "metrics.jsonl", self.stage, self.start_step)
        dist.barrier()
        resumed_at = self.start_step if self.resume and self.state is not None else None
        sink = (tensorboard_sink(self.run_dir / "tensorboard", self.run.tensorboard, resumed_at)
                if dist.is_main() else None)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=dist.is_main(), sinks=(sink,) if sink else ())
        self.provenance = provenance(self.device, self.run.precision)

    def save(self, name: str, task: Task, step: int, final: bool = False, **extra: Any) -> Path:
        path = self.checkpoints / name
        if dist.is_main():
            save_checkpoint(path, stage=self.stage, config=config_to_dict(self.config), step=step,
                            model=task.model.state_dict(), provenance=self.provenance,
                            optimizer=None if final else task.optimizer.state_dict(),
                            **({} if final else task.extra_state()), **task.checkpoint_content, **extra)
        return path

    def finish(self) -> Path:
        """Removes the resume checkpoints once ``final.pt`` is written."""
        if dist.is_main():
            for path in [self.checkpoints / "last.pt", *self.checkpoints.glob("step-*.pt")]:
                path.unlink(missing_ok=True)
        dist.barrier()
        return self.checkpoints / "final.pt"


def open_session(stage: str, config: Any, run_dir: str | Path, *, resume: bool, overwrite: bool,
                 identity_sections: tuple[str, ...]) -> Session:
    """Device, process group and the run directory's state; refuses an existing run unless asked, and a resumed
    run whose config would make it another experiment. Touches nothing on disk."""
    run = config.run
    set_threads(run.threads)
    distributed = dist.init_distributed(resolve_device(run.device).type)
    device = resolve_device(run.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    session = Session(stage, run_dir, config, run, device, distributed, resume, overwrite)
    final, last = session.checkpoints / "final.pt", session.checkpoints / "last.pt"
    if resume and final.is_file():
        session.finished = load_checkpoint(final)
        check_resumable(session.finished, config, identity_sections, stage)
        get_logger().info(f"{stage} already finished in {run_dir}; reusing it")
    elif resume and last.is_file():
        session.state = load_checkpoint(last)
        check_resumable(session.state, config, identity_sections, stage)
        get_logger().info(f"{stage}: resuming {run_dir} from step {session.start_step}")
    return session


def _truncate_metrics(path: Path, stage: str, step: int) -> None:
    records = read_metrics(path)
    kept = [r for r in records if r.get("stage") != stage or r.get("step") is None or r["step"] <= step]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class StopSignals:
    """Turns SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before preemption) into a flag the loop checks at the
    next step boundary, so the run saves a consistent checkpoint and exits; handlers installed before are
    chained. Only the main thread may install handlers: elsewhere this does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def __enter__(self) -> StopSignals:
        try:
            for sig in _STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self.__exit__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def _exit_code(signum: int) -> int:
    return 128 + int(signum)  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class _Checkpointer:
    """When to write ``last.pt`` (epoch ends, every N steps, every M minutes) and how many step copies to keep."""

    def __init__(self, session: Session, task: Task, losses: _LossWindow) -> None:
        self.session, self.task, self.run, self.losses = session, task, session.run, losses
        self.saved_at = time.monotonic()
        self.last_path: Path | None = None

    def due(self, step: int) -> bool:
        run = self.run
        by_steps = run.checkpoint_every_steps and step % run.checkpoint_every_steps == 0
        by_time = run.checkpoint_every_minutes and time.monotonic() - self.saved_at >= 60 * run.checkpoint_every_minutes
        return bool(by_steps or by_time)

    def save(self, step: int) -> Path:
        path = self.session.save("last.pt", self.task, step, loss_window=self.losses.state())
        self.saved_at, self.last_path = time.monotonic(), path
        keep = self.run.keep_checkpoints
        if keep > 1 and dist.is_main():
            shutil.copyfile(path, path.with_name(f"step-{step:09d}.pt"))
            for old in sorted(path.parent.glob("step-*.pt"))[:-keep + 1]:
                old.unlink()
        return path


class _LossWindow:
    """Mean loss over each logging window, the first and the last of them, and the steps skipped so far.

    Each value is already the mean over processes (:func:`_check_loss`), so every process holds the same state
    and ``last.pt`` carries it (:meth:`state`): a run resumed mid-window logs the records the uninterrupted run
    would have, on any number of processes."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.values: list[float] = list(state.get("values", []))
        self.first: float | None = state.get("first")
        self.last: float | None = state.get("last")
        self.skipped: int = int(state.get("skipped", 0))

    def state(self) -> dict[str, Any]:
        return {"values": list(self.values), "first": self.first, "last": self.last, "skipped": self.skipped}

    def close(self) -> float | None:
        if not self.values:
            return None
        mean = sum(self.values) / len(self.values)
        self.first = mean if self.first is None else self.first
        self.last, self.values = mean, []
        return mean


def fit(task: Task, session: Session) -> FitResult:
    """Trains ``task`` from the session's start step to the end of its budget."""
    run, budget, stage = session.run, task.budget, task.stage
    if session.state is not None:
        task.optimizer.load_state_dict(session.state["optimizer"])
    generator = generator_for(session.device, run.seed)
    losses = _LossWindow(session.state.get("loss_window") if session.state is not None else None)
    checkpointer = _Checkpointer(session, task, losses)
    step, items_per_s = session.start_step, 0.0
    task.model.train()
    with StopSignals() as signals:
        for epoch in range(step // budget.steps_per_epoch, budget.epochs):
            order = dist.shard_indices(task.num_examples, epoch, run.seed, batch_size=budget.local_batch)
            first = step - epoch * budget.steps_per_epoch
            source = task.batches(epoch, order, first) if task.batches is not None else None
            order = order.to(session.device)
            bar = tqdm(range(first, budget.steps_per_epoch),
                       desc=f"{stage} {epoch + 1}/{budget.epochs}", disable=not show_progress(run.progress),
                       leave=False, dynamic_ncols=True)
            tick, tick_step = time.perf_counter(), step
            for i in bar:
                _stop_if_signalled(signals, session, checkpointer, stage, step)
                generator.manual_seed(step_seed(run.seed, dist.rank(), step))
                lr = lr_at(step, budget.total_steps, task.peak_lr, budget.warmup_steps)
                set_lr(task.optimizer, lr)
                batch = next(source) if source is not None else (
                    order[i * budget.local_batch:(i + 1) * budget.local_batch])
                value = _train_step(task, session, batch, generator, step, checkpointer)
                losses.skipped += value is None
                if value is not None:
                    losses.values.append(value)
                step += 1
                if step % run.log_every == 0 or i == budget.steps_per_epoch - 1:
                    items_per_s = (step - tick_step) * budget.batch_size / max(time.perf_counter() - tick, 1e-9)
                    tick, tick_step = time.perf_counter(), step
                    mean = losses.close()
                    if mean is not None:
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.3g}")
                        record = TrainRecord(step, epoch + (i + 1) / budget.steps_per_epoch, mean, lr)
                        session.log.write(**metrics_record(record), stage=stage, items_per_s=items_per_s,
                                          skipped=losses.skipped)
                if checkpointer.due(step) and step < budget.total_steps:
                    checkpointer.save(step)
            bar.close()
            _end_of_epoch(task, session, checkpointer, epoch + 1, step, losses.last, items_per_s)
    if losses.first is not None and losses.last is not None and losses.last > losses.first:
        get_logger().warning(f"warning: {stage}: the training loss ended above its start ({losses.first:.4f} -> "
                             f"{losses.last:.4f}); the rate may be too high or the budget too short")
    return FitResult(step, losses.first, losses.last, losses.skipped, items_per_s)


def _stop_if_signalled(signals: StopSignals, session: Session, checkpointer: _Checkpointer, stage: str,
                       step: int) -> None:
    """At the step boundary, before any forward pass: save the finished steps and exit if any process was
    signalled."""
    stop = _agreed_signal(signals, session.distributed)
    if stop:
        path = checkpointer.save(step)
        raise Interrupted(f"{stage} stopped by signal {stop} after step {step}: checkpoint {path}; continue with "
                          "the same command and --resume", exit_code=_exit_code(stop))


def _train_step(task: Task, session: Session, batch: Any, generator: torch.Generator, step: int,
                checkpointer: _Checkpointer) -> float | None:
    """Forward, NaN/inf guard, backward and optimiser step; the loss (mean over processes), or None for a skipped
    step."""
    loss = task.train_step(batch, generator)
    value, mean, nonfinite = _check_loss(loss, session.distributed)
    task.optimizer.zero_grad(set_to_none=True)
    if nonfinite:
        if session.run.nonfinite == "stop":
            shown = value if not math.isfinite(value) else "non-finite on another process"
            raise SimCLRv2Error(f"{task.stage}: the loss became {shown} at step {step}; last good checkpoint: "
                                f"{checkpointer.last_path or 'none yet'}. Lower the learning rate, use "
                                "run.precision = 'fp32', or set run.nonfinite = 'skip'")
        get_logger().warning(f"warning: {task.stage}: non-finite loss at step {step} skipped")
        return None
    loss.backward()
    task.optimizer.step()
    if task.after_step is not None:
        task.after_step()
    return mean


def _end_of_epoch(task: Task, session: Session, checkpointer: _Checkpointer, done: int, step: int,
                  loss: float | None, items_per_s: float) -> None:
    epochs = task.budget.epochs
    if done % max(1, epochs // 10) == 0 or done == epochs:  # about ten lines per stage, however many epochs
        shown = f"{loss:.4f}" if loss is not None else "-"
        get_logger().info(f"{task.stage}: epoch {done}/{epochs}, loss {shown}, {items_per_s:.0f} {task.unit}/s")
    if task.evaluate is not None and task.eval_every and done % task.eval_every == 0 and done < epochs:
        task.evaluate(done, step)
    if done % session.run.checkpoint_every == 0 and done < epochs:
        checkpointer.save(step)


def _agreed_signal(signals: StopSignals, distributed: bool) -> int:
    """The stop signal any process received (0: none): every process stops at the same step, so a SIGTERM
    sent to one rank leaves one consistent checkpoint and no process waiting in a collective."""
    received = torch.tensor([float(signals.received or 0)])
    if distributed:
        received = dist.all_reduce_max(received)
    return int(received.item())


def _check_loss(loss: torch.Tensor, distributed: bool) -> tuple[float, float, bool]:
    """(this process's loss, the mean over processes, whether any process saw a non-finite loss): all processes
    take the same decision, so a NaN on one rank stops (or skips on) every rank together, without a hang."""
    value = loss.detach().float().item()
    finite = math.isfinite(value)
    # one collective for both: the mean loss, and the share of processes whose loss was not finite
    stats = torch.tensor([value if finite else 0.0, 0.0 if finite else 1.0], dtype=torch.float64)
    if distributed:
        stats = dist.all_reduce_mean(stats)
    return value, stats[0].item(), stats[1].item() > 0
