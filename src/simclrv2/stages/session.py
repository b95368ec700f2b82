"""One stage's run, from its directory to its result: what every stage does before and after the training loop.

:func:`open_session` takes the device and the process group and reads the run directory's state (refusing an
existing run unless asked, and a resumed run whose config would make it another experiment) without writing;
:meth:`Session.start` creates the directory once the stage's inputs have loaded; :meth:`Session.training` sets
up the network and its optimiser the same way for every stage; :meth:`Session.conclude` writes ``final.pt`` and
``result.json``. The training loop itself is :func:`simclrv2.stages.engine.fit`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simclrv2 import dist
from simclrv2.atomic import atomic_write_text
from simclrv2.checkpoint import (
    MetricsLog,
    check_run_dir,
    load_checkpoint,
    load_state,
    prepare_run_dir,
    read_metrics,
    save_checkpoint,
)
from simclrv2.config import RunConfig, config_to_dict, to_toml
from simclrv2.logs import get_logger
from simclrv2.models.cpu_kernels import use_fused_kernels
from simclrv2.models.global_bn import convert_to_global_bn
from simclrv2.optim import build_optimizer, param_groups, scaled_learning_rate
from simclrv2.provenance import provenance
from simclrv2.results import RESULT_FILE, ClassificationScores, StageResult
from simclrv2.runtime import (
    flush_denormals,
    keep_freed_memory,
    prepare_model,
    resolve_device,
    resolve_precision,
    set_fp32_math,
    set_threads,
)
from simclrv2.stages.resume import check_resumable
from simclrv2.tensorboard import tensorboard_sink

if TYPE_CHECKING:
    from simclrv2.stages.engine import Task


@dataclass(frozen=True)
class Training:
    """A stage's network and optimiser, set up by :meth:`Session.training`."""

    model: nn.Module  # the plain module: checkpointed and evaluated
    forward: nn.Module  # what a step calls: the model, wrapped in DDP across processes and compiled when asked
    optimizer: torch.optim.Optimizer
    peak_lr: float


@dataclass
class Session:
    """One stage's run directory and device: opened before inputs load, written only from :meth:`start` on."""

    stage: str
    run_dir: Path
    config: Any
    run: RunConfig
    device: torch.device
    distributed: bool
    resume: bool
    overwrite: bool
    state: dict[str, Any] | None = None  # last.pt of an interrupted run
    finished: bool = False  # resuming a run that already finished: its result.json is the answer
    log: MetricsLog = field(init=False)
    provenance: dict[str, Any] = field(init=False)  # code, libraries, device, precision, command line

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def start_step(self) -> int:
        return int(self.state["step"]) if self.state is not None else 0

    def create(self, recorded_config: Any = None, files: dict[str, Callable[[Path], None]] | None = None) -> None:
        """The main process creates (or reopens) the run directory and writes config.toml and ``files``; on
        resume, drops metric records past the checkpoint's step so the log reads as one uninterrupted run."""
        if not dist.is_main():
            return
        prepare_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
        for name, write in (files or {}).items():
            write(self.run_dir / name)
        atomic_write_text(self.run_dir / "config.toml", to_toml(recorded_config or self.config))
        if self.resume:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.stage, self.start_step)

    def start(self, recorded_config: Any = None, files: dict[str, Callable[[Path], None]] | None = None) -> None:
        """A training stage's start, on every process: :meth:`create`, then the metrics log (and TensorBoard)."""
        self.create(recorded_config, files)
        dist.barrier()
        resumed_at = self.start_step if self.resume and self.state is not None else None
        sink = (tensorboard_sink(self.run_dir / "tensorboard", self.run.tensorboard, resumed_at)
                if dist.is_main() else None)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=dist.is_main(), sinks=(sink,) if sink else ())
        self.provenance = provenance(self.device, self.run.precision)

    def training(self, model: nn.Module, batch_size: int, optimizer: Any, *, global_bn: bool,
                 plain: Sequence[nn.Module] = (), plain_lr_scale: float = 1.0) -> Training:
        """The set-up every training stage shares, in this order: the weights of an interrupted run, BN
        statistics over every process (``global_bn``), device and memory format, the peak rate scaled to the
        global ``batch_size``, the optimiser (the ``[stage.optimizer]`` section ``optimizer``) over
        :func:`param_groups` with its saved state, then DDP and ``torch.compile``. ``plain`` modules get neither
        weight decay nor trust-ratio adaptation, and their rate (with BN's and the biases') is scaled by
        ``plain_lr_scale``."""
        run = self.run
        if self.state is not None:
            load_state(model, self.state["model"], f"{self.checkpoints}/last.pt")
        if self.distributed and global_bn:
            model = convert_to_global_bn(model)
        model = prepare_model(model, self.device, run.channels_last)
        peak_lr = scaled_learning_rate(optimizer.base_lr, batch_size, optimizer.lr_scaling)
        groups = param_groups(model, optimizer.weight_decay, plain=plain)
        groups[1]["lr_scale"] = plain_lr_scale
        built = build_optimizer(groups, optimizer.name, peak_lr, optimizer.weight_decay, optimizer.momentum)
        if self.state is not None:
            built.load_state_dict(self.state["optimizer"])
        forward = dist.wrap_ddp(model, self.device) if self.distributed else model
        forward = torch.compile(forward) if run.compile else forward
        return Training(model, forward, built, peak_lr)

    def save(self, name: str, task: Task, step: int, final: bool = False, **extra: Any) -> Path:
        path = self.checkpoints / name
        if dist.is_main():
            training = task.training
            save_checkpoint(path, stage=self.stage, config=config_to_dict(self.config), step=step,
                            model=training.model.state_dict(), provenance=self.provenance,
                            optimizer=None if final else training.optimizer.state_dict(),
                            **({} if final else task.state()), **task.content, **extra)
        return path

    def finish(self) -> Path:
        """Removes the resume checkpoints once ``final.pt`` is written."""
        if dist.is_main():
            for path in [self.checkpoints / "last.pt", *self.checkpoints.glob("step-*.pt")]:
                path.unlink(missing_ok=True)
        dist.barrier()
        return self.checkpoints / "final.pt"

    def conclude(self, task: Task, step: int, details: dict[str, Any], *, val: ClassificationScores | None = None,
                 test: ClassificationScores | None = None, **extra: Any) -> StageResult:
        """A training stage's end: ``final.pt`` (with ``extra``), the resume checkpoints removed, and
        ``result.json`` with the scores and ``details`` (plus the provenance), once every process is done."""
        self.save("final.pt", task, step, final=True, **extra)
        checkpoint = self.finish()
        outcome = StageResult(stage=self.stage, run_dir=str(self.run_dir), checkpoint=str(checkpoint), val=val,
                              test=test, details={**details, "provenance": self.provenance})
        if dist.is_main():
            outcome.write(self.run_dir)
        dist.barrier()
        return outcome


def open_session(stage: str, config: Any, run_dir: str | Path, *, resume: bool, overwrite: bool,
                 identity_sections: tuple[str, ...] = ()) -> Session:
    """Threads, device, process group and the run directory's state; refuses an existing run unless asked, and a
    resumed run whose config would make it another experiment. Touches nothing on disk."""
    run = config.run
    set_threads(run.threads)
    flush_denormals()
    distributed = dist.init_distributed(resolve_device(run.device).type)
    device = resolve_device(run.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    set_fp32_math(resolve_precision(run.precision, device))
    if device.type == "cpu" and run.keep_freed_memory:
        keep_freed_memory()
    use_fused_kernels(device.type == "cpu" and run.fused_kernels)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = run.cudnn_benchmark
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    dist.barrier()  # every process has checked before the main one may write the run (Session.create)
    session = Session(stage, run_dir, config, run, device, distributed, resume, overwrite)
    final, last = session.checkpoints / "final.pt", session.checkpoints / "last.pt"
    if resume and final.is_file():
        check_resumable(load_checkpoint(final), config, identity_sections, stage)
        session.finished = True
        get_logger().info(f"{stage} already finished in {run_dir}; reusing it")
    elif resume and last.is_file():
        session.state = load_checkpoint(last)
        check_resumable(session.state, config, identity_sections, stage)
        get_logger().info(f"{stage}: resuming {run_dir} from step {session.start_step}")
    elif resume and (run_dir / RESULT_FILE).is_file():  # a stage without checkpoints (evaluate)
        session.finished = True
    return session


def _truncate_metrics(path: Path, stage: str, step: int) -> None:
    records = read_metrics(path)
    kept = [r for r in records if r.get("stage") != stage or r.get("step") is None or r["step"] <= step]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
