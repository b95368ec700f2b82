"""Reads what a run left behind into plain data for the report; never writes anything.

The directory that was asked for must hold a run (``summary.json`` of a pipeline, or ``metrics.jsonl`` /
``result.json`` of a single stage): otherwise one :class:`SimCLRv2Error`. Every other file is optional; one
that is absent or unreadable becomes a note that the page shows where its figure would be.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simclrv2.checkpoint import read_metrics
from simclrv2.errors import SimCLRv2Error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RUN_MARKERS = ("metrics.jsonl", "result.json")
REPORT_DIR = "report"


@dataclass
class RunData:
    """One stage's run directory: its metric records, result and config (each may be empty)."""

    name: str
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def stage(self) -> str | None:
        for record in self.records:
            if isinstance(record.get("stage"), str):
                return record["stage"]
        if self.result is not None and isinstance(self.result.get("stage"), str):
            return self.result["stage"]
        return None

    def series(self, event: str, x: str, y: str, stage: str | None = None) -> tuple[list[float], list[float]]:
        """(xs, ys) of the records of one event, sorted by x. A resumed run logs again the steps after its
        last checkpoint, so for a repeated x the later record wins."""
        points: dict[float, float] = {}
        for record in self.records:
            if record.get("event") != event or (stage is not None and record.get("stage") != stage):
                continue
            xv, yv = record.get(x), record.get(y)
            if is_number(xv) and is_number(yv):
                points[float(xv)] = float(yv)
        xs = sorted(points)
        return xs, [points[v] for v in xs]

    def time_span_s(self) -> float | None:
        times = [float(r["time"]) for r in self.records if is_number(r.get("time"))]
        return max(times) - min(times) if len(times) >= 2 else None


@dataclass
class Embeddings:
    features: torch.Tensor  # (M, D) float
    labels: torch.Tensor  # (M,) int64 in [0, len(classes))
    classes: list[str]
    source: str


@dataclass
class ReportData:
    """Everything the page can show. ``runs`` are the stage runs besides pretraining, by directory name."""

    run_dir: Path
    is_pipeline: bool
    summary: dict[str, Any] | None = None
    pretrain: RunData | None = None
    runs: dict[str, RunData] = field(default_factory=dict)
    embeddings: Embeddings | None = None
    notes: list[str] = field(default_factory=list)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} in {path.parent.name}/ could not be read ({type(exc).__name__})")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path.name} in {path.parent.name}/ is not a JSON object")
        return None
    return value


def _read_config(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        notes.append(f"config.toml in {path.parent.name}/ could not be read ({type(exc).__name__})")
        return None


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_MARKERS)


def load_run(path: Path, name: str | None = None) -> RunData:
    run = RunData(name=name or path.name, path=path)
    run.records = [r for r in read_metrics(path / "metrics.jsonl") if isinstance(r, dict)]
    run.result = _read_json(path / "result.json", run.notes)
    run.config = _read_config(path / "config.toml", run.notes)
    return run


def _load_summary(path: Path) -> dict[str, Any]:
    """The file that makes a pipeline directory: unreadable means there is nothing to report on."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimCLRv2Error(
            f"cannot read {path} ({type(exc).__name__}): rerun the pipeline to rewrite it"
        ) from exc
    if not isinstance(summary, dict):
        raise SimCLRv2Error(f"{path} is not a JSON object: rerun the pipeline to rewrite it")
    return summary


def summary_rows(summary: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """The rows of summary.json that have a method, a label fraction and a numeric top-1."""
    rows = summary.get("rows")
    if not isinstance(rows, list):
        notes.append("summary.json has no list of result rows")
        return []
    good = []
    for i, row in enumerate(rows):
        if (isinstance(row, dict) and isinstance(row.get("method"), str)
                and isinstance(row.get("labels"), str) and is_number(row.get("top1"))):
            good.append(row)
        else:
            notes.append(f"row {i} of summary.json lacks a method, labels or numeric top1 and is left out")
    return good


def _sub_run(run_dir: Path, name: str, notes: list[str]) -> RunData | None:
    path = run_dir / name
    # Names come from a file: refuse to follow one out of the run directory.
    if Path(name).is_absolute() or ".." in Path(name).parts:
        notes.append(f"run {name!r} named in summary.json lies outside {run_dir.name}/ and is left out")
        return None
    if not path.is_dir():
        notes.append(f"run directory {name}/ named in summary.json does not exist")
        return None
    return load_run(path, name)


def _load_embeddings(path: Path, notes: list[str]) -> Embeddings | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or foreign file: the rest of the report is still useful
        notes.append(f"embeddings.pt could not be read ({type(exc).__name__}: {exc})".splitlines()[0])
        return None
    problem = _embeddings_problem(payload)
    if problem:
        notes.append(f"embeddings.pt is left out: {problem}")
        return None
    features, labels = payload["features"].float(), payload["labels"].long()
    return Embeddings(features, labels, [str(c) for c in payload["classes"]], str(payload.get("source", "")))


def _embeddings_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict) or not {"features", "labels", "classes"} <= set(payload):
        return "expected a dict with features, labels and classes"
    features, labels, classes = payload["features"], payload["labels"], payload["classes"]
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        return "features must be a float tensor (M, D)"
    if features.shape[0] < 2 or features.shape[1] < 2:
        return f"a 2-D projection needs at least 2 samples of 2 dimensions, got {tuple(features.shape)}"
    if not torch.isfinite(features).all():
        return "features hold NaN or infinite values"
    if (not isinstance(labels, torch.Tensor) or labels.shape != (features.shape[0],)
            or labels.is_floating_point()):
        return f"labels must be an integer tensor of shape ({features.shape[0]},)"
    if not isinstance(classes, (list, tuple)) or not classes:
        return "classes must be a non-empty list of names"
    if labels.min().item() < 0 or labels.max().item() >= len(classes):
        return f"labels must lie in [0, {len(classes)}) to name a class"
    return None


def collect(run_dir: str | Path) -> ReportData:
    """Reads a pipeline directory (``summary.json``, or sub-runs of a pipeline that has not finished) or a
    single stage's run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SimCLRv2Error(f"run directory {run_dir} not found: pass the --run-dir of a pipeline or a stage")
    summary_path = run_dir / "summary.json"
    sub_runs = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and is_run_dir(p))
    if not summary_path.is_file() and not is_run_dir(run_dir) and not sub_runs:
        raise SimCLRv2Error(f"{run_dir} holds no run: expected summary.json (a pipeline) or metrics.jsonl "
                            "(a single stage); pass the --run-dir the run wrote to")
    if summary_path.is_file() or not is_run_dir(run_dir):
        data = ReportData(run_dir, is_pipeline=True)
        if summary_path.is_file():
            data.summary = _load_summary(summary_path)
            names = [row["run"] for row in summary_rows(data.summary, []) if isinstance(row.get("run"), str)]
        else:
            data.notes.append("no summary.json: the pipeline has not finished; results are from its sub-runs")
            names = sub_runs
        if (run_dir / "pretrain").is_dir():
            data.pretrain = load_run(run_dir / "pretrain")
        for name in dict.fromkeys(names):  # unique, in order
            if name != "pretrain" and (run := _sub_run(run_dir, name, data.notes)) is not None:
                data.runs[name] = run
    else:
        data = ReportData(run_dir, is_pipeline=False)
        run = load_run(run_dir, run_dir.resolve().name)
        if run.stage == "pretrain":
            data.pretrain = run
        else:
            data.runs[run.name] = run
    for run in ([data.pretrain] if data.pretrain else []) + list(data.runs.values()):
        data.notes.extend(run.notes)
    data.embeddings = _load_embeddings(run_dir / "embeddings.pt", data.notes)
    return data
