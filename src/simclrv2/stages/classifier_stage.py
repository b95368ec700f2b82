"""Run-directory bookkeeping shared by the stages that train a classifier (fine-tune, supervised, distill):
resume or reuse, checkpoints, the final evaluation and ``result.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclrv2 import dist
from simclrv2.architecture import Architecture, load_state
from simclrv2.checkpoint import (
    MetricsLog,
    atomic_write_text,
    check_run_dir,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
)
from simclrv2.config import Config, config_to_dict, to_toml
from simclrv2.data import ImageDataset
from simclrv2.data.subsets import write_subset_file
from simclrv2.metrics import classification_report
from simclrv2.runtime import resolve_device, set_threads
from simclrv2.stages.classifier_training import BatchLoss, Progress, Recipe, train_classifier
from simclrv2.stages.features import classifier_logits
from simclrv2.stages.resume import check_resumable

SUBSET_FILE = "labelled_subset.txt"


@dataclass
class StageSetup:
    """What a classifier stage trains: built by the stage, run by :func:`run_classifier_stage`."""

    model: nn.Module
    images: torch.Tensor  # (N, C, H, W) uint8 training images
    batch_loss: BatchLoss
    recipe: Recipe
    test: ImageDataset | None
    architecture: Architecture
    head_layer: int
    classes: tuple[str, ...]
    summary: dict[str, Any] = field(default_factory=dict)  # stage facts for result.json (subset size, teacher...)
    labelled: tuple[ImageDataset, torch.Tensor] | None = None  # (dataset, indices) written to SUBSET_FILE
    recorded_config: Config | None = None  # the config written to config.toml when it differs from the one given


@dataclass(frozen=True)
class StageResult:
    run_dir: Path
    checkpoint: Path
    test_top1: float | None
    result: dict[str, Any]


def run_classifier_stage(
    stage: str,
    config: Any,
    run_dir: str | Path,
    resume: bool,
    overwrite: bool,
    identity_sections: tuple[str, ...],
    prepare: Callable[[torch.device], StageSetup],
) -> StageResult:
    """Loads the stage's inputs, then prepares the run directory, trains (or resumes, or reuses a finished
    run) and evaluates. Inputs load first so that bad input leaves an existing run untouched."""
    run = config.run
    set_threads(run.threads)
    distributed = dist.init_distributed(resolve_device(run.device).type)
    device = resolve_device(run.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    state = None
    if resume and (checkpoints / "final.pt").is_file():
        payload = load_checkpoint(checkpoints / "final.pt")
        check_resumable(payload, config, identity_sections, stage)
        result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
        if dist.is_main():
            print(f"{stage} already finished in {run_dir}; reusing it", flush=True)
        return StageResult(run_dir, checkpoints / "final.pt", result.get("top1"), result)
    if resume and (checkpoints / "last.pt").is_file():
        state = load_checkpoint(checkpoints / "last.pt")
        check_resumable(state, config, identity_sections, stage)

    setup = prepare(device)
    if state is not None:
        load_state(setup.model, state["model"], str(checkpoints / "last.pt"))
    if setup.recorded_config is not None:
        config = setup.recorded_config
    if dist.is_main():
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        if setup.labelled is not None:
            write_subset_file(run_dir / SUBSET_FILE, *setup.labelled)
        atomic_write_text(run_dir / "config.toml", to_toml(config))
    dist.barrier()
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=dist.is_main())

    def save(progress: Progress, model: nn.Module, optimizer: torch.optim.Optimizer | None, name: str = "last.pt"):
        if dist.is_main():
            save_checkpoint(
                checkpoints / name, stage=stage, kind="classifier", architecture=setup.architecture.to_dict(),
                head_layer=setup.head_layer, num_classes=len(setup.classes), classes=list(setup.classes),
                config=config_to_dict(config), model=model.state_dict(),
                optimizer=optimizer.state_dict() if optimizer is not None else None,
                step=progress.step, test_top1=progress.test_top1,
            )

    model, top1 = train_classifier(
        setup.model, setup.images, setup.batch_loss, setup.recipe, run=run, device=device, log=log, stage=stage,
        test=setup.test, save=save, optimizer_state=state["optimizer"] if state is not None else None,
        start_step=int(state["step"]) if state is not None else 0,
    )
    save(Progress(-1, setup.recipe.epochs, top1), model, None, name="final.pt")
    result: dict[str, Any] = {"stage": stage, **setup.summary}
    if dist.is_main():
        if setup.test is not None and setup.test.labels is not None:
            logits = classifier_logits(model, setup.test, device, run.eval_batch_size, run.precision)
            result.update(classification_report(logits.argmax(1), setup.test.labels, setup.classes))
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
        (checkpoints / "last.pt").unlink(missing_ok=True)
        print(f"{stage} done: test top-1 {result.get('top1', float('nan')):.4f}; checkpoint {checkpoints / 'final.pt'}",
              flush=True)
    dist.barrier()
    return StageResult(run_dir, checkpoints / "final.pt", result.get("top1"), result)
