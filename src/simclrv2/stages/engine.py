"""The one training loop every stage runs on.

A stage writes its step as a :class:`Task` (the batch's model inputs, their loss, what follows the optimiser
step) and :func:`fit` runs it: per-step seeds and sharding, the learning rate as a function of the step, backward
and optimiser step, the NaN/inf guard, logging, step timing, checkpoints (per epoch, every N steps or M minutes,
and on SIGTERM/SIGINT/SIGUSR1) and the periodic evaluation. What comes before and after the loop (the run
directory, the network's and optimiser's set-up, final.pt and result.json) is the
:class:`~simclrv2.stages.session.Session`'s.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from simclrv2 import dist
from simclrv2.errors import Interrupted, SimCLRv2Error
from simclrv2.logs import get_logger, show_progress
from simclrv2.optim import lr_at, set_lr, warmup_steps_for
from simclrv2.results import TrainRecord, metrics_record
from simclrv2.runtime import generator_for
from simclrv2.stages.resume import step_seed
from simclrv2.stages.session import Session, Training
from simclrv2.stages.signals import StopSignals, exit_code

# fewer optimiser steps than this and a stage cannot be expected to train: it says so
MIN_SENSIBLE_STEPS = 100


@dataclass(frozen=True)
class Budget:
    """A stage's step budget, derived from the data: epochs over ``num_examples`` raised to ``min_steps``."""

    num_examples: int  # what an epoch runs over
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
        return cls(num_examples, batch, batch // world, steps_per_epoch, epochs, total,
                   warmup_steps_for(total, warmup_fraction))


@dataclass(eq=False)
class Task:
    """One stage's training step; stages subclass it. Every step, :func:`fit` runs::

        inputs = task.inputs(batch, generator)   # the batch's model inputs (augmented views), data side
        loss = task.loss(inputs)                 # forward pass and loss, through training.forward
        loss.backward(); optimizer.step()        # the engine's, after the NaN/inf guard
        task.after_step(inputs)                  # e.g. the EMA memory's update

    ``batch`` is the step's slice of the epoch's order (indices into the ``budget.num_examples`` examples, on
    the device), or what :meth:`stream` yields for the step; ``generator`` is seeded per step and process, so a
    resumed run draws the views the uninterrupted one would have."""

    training: Training
    budget: Budget
    content: dict[str, Any]  # what rebuilds the model from final.pt: kind, architecture, head layer, classes...
    eval_every: int  # epochs between evaluate() calls during training (0: none)
    unit: ClassVar[str] = "images"  # what the throughput in logs counts

    def inputs(self, batch: Any, generator: torch.Generator) -> Any:
        raise NotImplementedError

    def loss(self, inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, inputs: Any) -> None:
        """Runs after every optimiser step."""

    def evaluate(self, epoch: int, step: int) -> None:
        """Runs every ``eval_every`` epochs, but not after the last: the stage scores its end itself."""

    def state(self) -> dict[str, Any]:
        """What last.pt holds besides the weights and the optimiser (the memory queue, the EMA network)."""
        return {}

    def stream(self, epoch: int, order: torch.Tensor, first: int) -> Iterator[Any] | None:
        """Streamed data: the batches of steps ``first`` … of the epoch, given its (per-process, CPU) order, so
        the engine still owns the order and the step. None (in memory): the order's slices are the batches."""
        return None


@dataclass(frozen=True)
class StepTime:
    """Where one optimiser step's time went, in seconds: ``run.step_timing`` writes the means over each logging
    window into metrics.jsonl's train records, and ``fit(on_step=...)`` receives one per step. The device is
    synchronised at each boundary only while steps are timed, so the split holds on GPUs too."""

    step: int  # the steps done, as in metrics.jsonl
    data_s: float  # waiting for the batch and making its model inputs (streamed decoding, augmentation)
    model_s: float  # forward, loss, NaN/inf guard, backward, optimiser step and after_step
    step_s: float  # since the previous step ended (or the epoch began): data, model and the engine's bookkeeping


@dataclass(frozen=True)
class FitResult:
    step: int
    first_loss: float | None  # mean over the first logging window
    last_loss: float | None  # mean over the last logging window
    skipped_steps: int
    items_per_s: float


def fit(task: Task, session: Session, on_step: Callable[[StepTime], None] | None = None) -> FitResult:
    """Trains ``task`` from the session's start step to the end of its budget; ``on_step`` (or
    ``run.step_timing``) times every step."""
    run, budget, training = session.run, task.budget, task.training
    generator = generator_for(session.device, run.seed)
    log = _TrainLog(session, task)
    checkpointer = _Checkpointer(session, task, log.losses)
    clock = _StepClock(session.device, on=run.step_timing or on_step is not None)
    step = session.start_step
    training.model.train()
    with StopSignals() as signals:
        for epoch in range(step // budget.steps_per_epoch, budget.epochs):
            first = step - epoch * budget.steps_per_epoch
            batches = _batches(task, session, epoch, first)
            clock.start()
            for i in log.progress(epoch, first):
                _stop_if_signalled(signals, session, checkpointer, step)
                lr = lr_at(step, budget.total_steps, training.peak_lr, budget.warmup_steps)
                set_lr(training.optimizer, lr)
                generator.manual_seed(step_seed(run.seed, dist.rank(), step))
                clock.mark("data")  # waiting for the batch and augmenting it from here
                inputs = task.inputs(next(batches), generator)
                clock.mark("model")  # forward, backward and optimiser step from here
                loss = task.loss(inputs)
                value = _guard(loss, session, step, checkpointer)  # mean over processes; None: skip the step
                training.optimizer.zero_grad(set_to_none=True)
                if value is not None:
                    loss.backward()
                    training.optimizer.step()
                    task.after_step(inputs)
                step += 1
                timing = clock.stop(step)
                log.step(step, i, lr, value, timing)
                if checkpointer.due(step) and step < budget.total_steps:
                    checkpointer.save(step)
                if on_step is not None:
                    on_step(timing)
            log.end_epoch()
            _end_of_epoch(task, session, checkpointer, epoch + 1, step, log)
    return log.result(step)


def _batches(task: Task, session: Session, epoch: int, first: int) -> Iterator[Any]:
    """The epoch's batches from step ``first`` on: one seeded order per epoch, the same on every process, which
    takes its own shard of it (streamed data maps the order to decoded crops)."""
    budget = task.budget
    order = dist.shard_indices(budget.num_examples, epoch, session.run.seed, batch_size=budget.local_batch)
    streamed = task.stream(epoch, order, first)
    if streamed is not None:
        return streamed
    order, size = order.to(session.device), budget.local_batch
    return (order[i * size:(i + 1) * size] for i in range(first, budget.steps_per_epoch))


def _stop_if_signalled(signals: StopSignals, session: Session, checkpointer: _Checkpointer, step: int) -> None:
    """At the step boundary, before any forward pass: save the finished steps and exit if any process was
    signalled."""
    stop = signals.agreed(session.distributed)
    if stop:
        path = checkpointer.save(step)
        raise Interrupted(f"{session.stage} stopped by signal {stop} after step {step}: checkpoint {path}; continue "
                          "with the same command and --resume", exit_code=exit_code(stop))


def _guard(loss: torch.Tensor, session: Session, step: int, checkpointer: _Checkpointer) -> float | None:
    """The loss averaged over processes, or None when any process saw a non-finite one (``run.nonfinite =
    "skip"``): every process takes the same decision, so a NaN on one rank stops (or skips on) every rank
    together, without a hang."""
    value = loss.detach().float().item()
    finite = math.isfinite(value)
    # one collective for both: the mean loss, and the share of processes whose loss was not finite
    stats = torch.tensor([value if finite else 0.0, 0.0 if finite else 1.0], dtype=torch.float64)
    if session.distributed:
        stats = dist.all_reduce_mean(stats)
    if stats[1].item() == 0:
        return stats[0].item()
    if session.run.nonfinite == "stop":
        shown = value if not finite else "non-finite on another process"
        raise SimCLRv2Error(f"{session.stage}: the loss became {shown} at step {step}; last good checkpoint: "
                            f"{checkpointer.last_path or 'none yet'}. Lower the learning rate, use "
                            "run.precision = 'fp32', or set run.nonfinite = 'skip'")
    get_logger().warning(f"warning: {session.stage}: non-finite loss at step {step} skipped")
    return None


def _end_of_epoch(task: Task, session: Session, checkpointer: _Checkpointer, done: int, step: int,
                  log: _TrainLog) -> None:
    epochs = task.budget.epochs
    if done % max(1, epochs // 10) == 0 or done == epochs:  # about ten lines per stage, however many epochs
        loss = log.losses.last
        shown = f"{loss:.4f}" if loss is not None else "-"
        get_logger().info(f"{session.stage}: epoch {done}/{epochs}, loss {shown}, {log.items_per_s:.0f} "
                          f"{task.unit}/s")
    if task.eval_every and done % task.eval_every == 0 and done < epochs:
        task.evaluate(done, step)
    if done % session.run.checkpoint_every == 0 and done < epochs:
        checkpointer.save(step)


class _StepClock:
    """Times the parts of a step when asked to (otherwise every call returns at once): marks in order
    ``start`` (the epoch's first step) … ``data`` → ``model`` → ``stop``, synchronising the device at each, so
    asynchronous GPU work is counted where it was launched."""

    def __init__(self, device: torch.device, on: bool) -> None:
        self.device, self.on = device, on
        self.marks: dict[str, float] = {}

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        if self.on:
            self.marks["stop"] = self._now()

    def mark(self, name: str) -> None:
        if self.on:
            self.marks[name] = self._now()

    def stop(self, step: int) -> StepTime | None:
        if not self.on:
            return None
        now, marks = self._now(), self.marks
        timing = StepTime(step, marks["model"] - marks["data"], now - marks["model"], now - marks["stop"])
        marks["stop"] = now
        return timing


class _TrainLog:
    """The train records: every ``run.log_every`` steps and at each epoch's end, the mean loss over the window
    (and every process), the rate, throughput, skipped steps and, when steps are timed, their mean times."""

    def __init__(self, session: Session, task: Task) -> None:
        self.session, self.budget = session, task.budget
        # a resumed run finishes the logging window its checkpoint cut, as the uninterrupted run did
        self.losses = _LossWindow(session.state.get("loss_window") if session.state is not None else None)
        self.times: list[StepTime] = []
        self.items_per_s = 0.0
        self.tick, self.tick_step, self.epoch = time.perf_counter(), 0, 0

    def progress(self, epoch: int, first: int) -> tqdm:
        """The epoch's steps from ``first`` on, with a progress bar on a terminal."""
        budget, run = self.budget, self.session.run
        self.bar = tqdm(range(first, budget.steps_per_epoch), desc=f"{self.session.stage} {epoch + 1}/{budget.epochs}",
                        disable=not show_progress(run.progress), leave=False, dynamic_ncols=True)
        self.epoch, self.tick, self.tick_step = epoch, time.perf_counter(), epoch * budget.steps_per_epoch + first
        return self.bar

    def end_epoch(self) -> None:
        self.bar.close()

    def step(self, step: int, i: int, lr: float, value: float | None, timing: StepTime | None) -> None:
        """After step ``i`` of the epoch (``step`` steps done in all)."""
        self.losses.skipped += value is None
        if value is not None:
            self.losses.values.append(value)
        if timing is not None:
            self.times.append(timing)
        steps_per_epoch = self.budget.steps_per_epoch
        if step % self.session.run.log_every and i != steps_per_epoch - 1:
            return
        now = time.perf_counter()
        self.items_per_s = (step - self.tick_step) * self.budget.batch_size / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, step
        mean, times, self.times = self.losses.close(), self.times, []
        if mean is None:
            return
        self.bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.3g}")
        timed = {key: round(sum(getattr(t, key) for t in times) / len(times), 6)
                 for key in ("data_s", "model_s", "step_s")} if times else {}
        record = TrainRecord(step, self.epoch + (i + 1) / steps_per_epoch, mean, lr)
        self.session.log.write(**metrics_record(record), stage=self.session.stage,
                               items_per_s=self.items_per_s, skipped=self.losses.skipped, **timed)

    def result(self, step: int) -> FitResult:
        first, last = self.losses.first, self.losses.last
        if first is not None and last is not None and last > first:
            get_logger().warning(f"warning: {self.session.stage}: the training loss ended above its start "
                                 f"({first:.4f} -> {last:.4f}); the rate may be too high or the budget too short")
        return FitResult(step, first, last, self.losses.skipped, self.items_per_s)


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

    Each value is already the mean over processes (:func:`_guard`), so every process holds the same state
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
