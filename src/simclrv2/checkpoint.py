"""Run directories and checkpoints: writing and loading them, and building the network a payload describes.

Stages, evaluation and the inference loader read a loaded payload's other fields (``head_layer``, ``classes``,
``image_size``, the recorded config) themselves.

A run directory holds ``config.toml`` (the resolved config), ``metrics.jsonl`` (one JSON object per line) and
``checkpoints/`` (``last.pt`` while training, ``final.pt`` once done). Writes are atomic (temporary file, then
rename) so an interrupted run never leaves a half-written checkpoint, and an existing run is never replaced
unless the user asks for it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclrv2.atomic import atomic_path
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.networks import Classifier, SimCLRModel
from simclrv2.models.spec import ModelSpec

FORMAT = "simclrv2-checkpoint"
FORMAT_VERSION = 1
# What a network checkpoint records about its network (by "kind"); a run written before all of these were
# recorded cannot be rebuilt and fed exactly, so it is refused rather than guessed at.
NETWORK_FIELDS = {"simclr": ("architecture", "image_size"),
                  "classifier": ("architecture", "image_size", "head_layer", "num_classes", "classes")}
RUN_FILES = ("config.toml", "metrics.jsonl", "checkpoints", "result.json", "labelled_subset.txt",
             "pipeline.json", "summary.json", "embeddings.pt", "report", "augmentations.png", "tensorboard")


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuses an existing run unless ``resume`` or ``overwrite``; touches nothing.

    Stages call this first and :func:`prepare_run_dir` only once their inputs have loaded, so a typo or
    missing data never leaves a half-made run behind or removes the run that ``--overwrite`` would replace.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SimCLRv2Error(f"run directory {run_dir} is a file; choose another --run-dir")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not (resume or overwrite):
        raise SimCLRv2Error(
            f"run directory {run_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --run-dir"
        )


def prepare_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Creates the run directory; refuses to touch an existing run unless ``resume`` or ``overwrite``.

    ``overwrite`` removes only the files a run writes (RUN_FILES), never anything else the user keeps there.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if overwrite and not resume:
        for name in RUN_FILES:
            target = run_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(path: Path, **content: Any) -> None:
    """Saves tensors and plain data atomically; loadable with ``weights_only=True`` (no pickled code)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "saved_at": time.time(), **content}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path)
    if not path.is_file():
        raise SimCLRv2Error(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or foreign file
        raise SimCLRv2Error(
            f"cannot read checkpoint {path} ({type(exc).__name__}): is it a simclrv2 checkpoint?"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SimCLRv2Error(f"{path} is not a simclrv2 checkpoint")
    missing = [key for key in NETWORK_FIELDS.get(payload.get("kind"), ()) if payload.get(key) is None]
    if missing:
        raise SimCLRv2Error(f"{path} was written by an older simclrv2 and records no {', '.join(missing)}; rerun "
                            f"its {payload.get('stage', '')} stage with this version")
    return payload


def load_state(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Loads weights strictly; a mismatch becomes one line naming the first differing keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise SimCLRv2Error(f"{source} does not fit this architecture: {' '.join(first)[:300]}") from exc


def read_pretrained(path: str | Path) -> tuple[ModelSpec, SimCLRModel, dict[str, Any]]:
    """(spec, model, payload): the SimCLR model (encoder + projection head) of a pretraining run directory or
    checkpoint, and the payload's other fields (``image_size``, ...)."""
    if not str(path):
        raise SimCLRv2Error("no pretrained model given: set finetune.pretrained to a pretraining run directory")
    payload = load_checkpoint(path)
    spec, model = pretrained_from(payload, str(path))
    return spec, model, payload


def pretrained_from(payload: dict[str, Any], source: str) -> tuple[ModelSpec, SimCLRModel]:
    """:func:`read_pretrained` on a payload already loaded (a stage that also needs its other fields)."""
    if payload.get("kind") != "simclr":
        raise SimCLRv2Error(f"{source} is a {payload.get('stage')!r} checkpoint, not a pretraining run")
    spec = ModelSpec.from_dict(payload["architecture"])
    model = spec.build_simclr()
    load_state(model, payload["model"], source)
    return spec, model


def read_classifier(path: str | Path) -> tuple[ModelSpec, Classifier, dict[str, Any]]:
    """(spec, model, payload) of a fine-tuned, supervised or distilled checkpoint; ``payload["head_layer"]`` and
    ``payload["classes"]`` say what it predicts."""
    payload = load_checkpoint(path)
    spec, model = classifier_from(payload, str(path))
    return spec, model, payload


def classifier_from(payload: dict[str, Any], source: str) -> tuple[ModelSpec, Classifier]:
    """:func:`read_classifier` on a payload already loaded."""
    if payload.get("kind") != "classifier":
        raise SimCLRv2Error(
            f"checkpoint from stage {payload.get('stage')!r} holds no classifier; pass a fine-tuned, supervised "
            "or distilled run"
        )
    spec = ModelSpec.from_dict(payload["architecture"])
    model = spec.build_classifier(int(payload["head_layer"]), int(payload["num_classes"]))
    load_state(model, payload["model"], source)
    return spec, model


def network_from(payload: dict[str, Any], source: str) -> tuple[ModelSpec, SimCLRModel | Classifier]:
    """The network of a pretraining payload (encoder + projection head) or of a classifier payload."""
    read = classifier_from if payload.get("kind") == "classifier" else pretrained_from
    return read(payload, source)


def encoder_from(payload: dict[str, Any], source: str) -> tuple[ModelSpec, nn.Module]:
    """The encoder of a pretraining payload, or the fine-tuned encoder of a classifier payload."""
    spec, model = network_from(payload, source)
    return spec, model.encoder


def find_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of a run directory: ``final.pt`` when the run finished, else ``last.pt``."""
    for name in ("final.pt", "last.pt"):
        candidate = run_dir / "checkpoints" / name
        if candidate.is_file():
            return candidate
    raise SimCLRv2Error(f"no checkpoint in {run_dir / 'checkpoints'}; is {run_dir} a finished or started run?")


class MetricsLog:
    """Appends one JSON object per line; each line is flushed so a crash loses at most the current line."""

    def __init__(self, path: Path, enabled: bool = True, sinks: tuple[Any, ...] = ()) -> None:
        self.path = path
        self.enabled = enabled
        self.sinks = sinks  # more places the same records go (TensorBoard): objects with write(record)

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
    return records
