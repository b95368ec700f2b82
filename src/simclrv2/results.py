"""What runs write: typed results that stages produce and the report and the pipeline read.

One name for a score everywhere: ``top1``, a fraction in [0, 1]. ``val`` is the validation split (held-out
*training* images, the only labels used to choose anything); ``test`` is the test split, read once at the end
and never used to decide.

Files: ``result.json`` (a :class:`StageResult`, one per stage run directory), ``summary.json`` (a
:class:`PipelineSummary`), ``embeddings.pt`` (:class:`Embeddings`) and ``metrics.jsonl`` (one JSON object per
line, read with :func:`simclrv2.checkpoint.read_metrics`; the keys the report uses are the fields of
:class:`TrainRecord`, :class:`EvalRecord` and :class:`KnnRecord`, plus ``event``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from simclrv2.atomic import atomic_write_text
from simclrv2.checkpoint import load_checkpoint, save_checkpoint
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.metrics import classification_report

STAGES = ("pretrain", "finetune", "supervised", "linear", "knn", "evaluate", "distill")  # evaluate: a classifier
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
EMBEDDINGS_FILE = "embeddings.pt"
RESULT_FORMAT = "simclrv2-result"
SUMMARY_FORMAT = "simclrv2-summary"
FORMAT_VERSION = 1


# --- metrics.jsonl records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainRecord:
    """One logged optimiser step. Stages may add keys (``stage``, ``time``, ``pairs_per_s``); readers ignore them."""

    EVENT: ClassVar[str] = "train"
    step: int
    epoch: float  # fractional: epoch + (batch + 1) / steps_per_epoch
    loss: float
    lr: float


@dataclass(frozen=True)
class EvalRecord:
    """Validation top-1 of a classifier stage during training."""

    EVENT: ClassVar[str] = "eval"
    step: int
    epoch: float
    val_top1: float


@dataclass(frozen=True)
class KnnRecord:
    """Validation kNN top-1 of the pretraining encoder (epoch 0: the random initialisation)."""

    EVENT: ClassVar[str] = "knn"
    step: int
    epoch: float
    knn_top1: float


def metrics_record(entry: TrainRecord | EvalRecord | KnnRecord) -> dict[str, Any]:
    """The JSON line of a record: ``MetricsLog.write(**metrics_record(TrainRecord(...)))``."""
    return {"event": entry.EVENT, **asdict(entry)}


# --- scores ------------------------------------------------------------------------------------------------

def _fail(where: str, problem: str) -> SimCLRv2Error:
    return SimCLRv2Error(f"{where}: {problem}; rerun the stage that wrote it with this version of simclrv2")


def _get(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``data[key]`` checked against ``kind``: the one place a file written by a run is validated."""
    if not isinstance(data, dict) or key not in data:
        raise _fail(where, f"missing {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):  # JSON true is not a number here
        raise _fail(where, f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def _number(data: Any, key: str, where: str, optional: bool = False) -> Any:
    """A float, or None where ``optional`` and the value is null."""
    value = _get(data, key, (int, float, type(None)) if optional else (int, float), where)
    return None if value is None else float(value)


@dataclass(frozen=True)
class ClassificationScores:
    """Top-1, recall per class and the confusion matrix (rows: true class, columns: predicted) on one split.

    ``per_class`` leaves out classes that have no samples in the split (they have no recall)."""

    top1: float
    per_class: dict[str, float]
    confusion: list[list[int]]
    classes: list[str]

    @classmethod
    def from_predictions(cls, predictions: torch.Tensor, labels: torch.Tensor,
                         classes: Sequence[str]) -> ClassificationScores:
        """From (N,) predicted classes or (N, C) logits and (N,) true labels."""
        report = classification_report(predictions, labels, classes)
        per_class = {name: r for name, r in report["per_class"].items() if r is not None}
        return cls(report["top1"], per_class, report["confusion_matrix"], report["classes"])

    @property
    def num_samples(self) -> int:
        return sum(sum(row) for row in self.confusion)

    def to_json(self) -> dict[str, Any]:
        return {"top1": self.top1, "per_class": dict(self.per_class), "confusion": [list(r) for r in self.confusion],
                "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "scores") -> ClassificationScores:
        classes = [str(c) for c in _get(data, "classes", list, where)]
        confusion = _get(data, "confusion", list, where)
        if len(confusion) != len(classes) or any(not isinstance(r, list) or len(r) != len(classes)
                                                 for r in confusion):
            raise _fail(where, f"'confusion' is not {len(classes)} x {len(classes)} (one row per class)")
        per_class = {str(k): float(v) for k, v in _get(data, "per_class", dict, where).items()}
        return cls(_number(data, "top1", where), per_class,
                   [[int(v) for v in row] for row in confusion], classes)


# --- one stage -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageResult:
    """What one stage run leaves in ``RUN_DIR/result.json``.

    ``details`` holds stage facts as plain JSON values; for pretrain: ``knn_top1``, ``knn_top1_at_init``
    (validation kNN after and before training) and ``pairs_per_s``."""

    stage: str
    run_dir: str
    checkpoint: str | None
    val: ClassificationScores | None
    test: ClassificationScores | None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise SimCLRv2Error(f"unknown stage {self.stage!r}: expected one of {', '.join(STAGES)}")

    @property
    def val_top1(self) -> float | None:
        return self.val.top1 if self.val else None

    @property
    def test_top1(self) -> float | None:
        return self.test.top1 if self.test else None

    def to_json(self) -> dict[str, Any]:
        return {"format": RESULT_FORMAT, "format_version": FORMAT_VERSION, "stage": self.stage,
                "run_dir": self.run_dir, "checkpoint": self.checkpoint,
                "val": self.val.to_json() if self.val else None, "test": self.test.to_json() if self.test else None,
                "details": dict(self.details)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = RESULT_FILE) -> StageResult:
        _check_format(data, RESULT_FORMAT, where)
        checkpoint = _get(data, "checkpoint", (str, type(None)), where)
        val, test = (_get(data, split, (dict, type(None)), where) for split in ("val", "test"))
        return cls(_get(data, "stage", str, where), _get(data, "run_dir", str, where), checkpoint,
                   ClassificationScores.from_json(val, f"{where} (val)") if val is not None else None,
                   ClassificationScores.from_json(test, f"{where} (test)") if test is not None else None,
                   dict(_get(data, "details", dict, where)))

    def write(self, run_dir: str | Path) -> Path:
        """Writes ``run_dir/result.json`` atomically; returns its path."""
        path = Path(run_dir) / RESULT_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> StageResult:
        path = Path(run_dir) / RESULT_FILE
        return cls.from_json(_read_json(path, "the stage has not finished: run or --resume it"), str(path))


# --- a pipeline ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SummaryRow:
    """One method at one label fraction (``labels``: "1%", "10%", ...), run in ``run`` (a sub-directory)."""

    method: str
    labels: str
    run: str
    val_top1: float | None
    test_top1: float | None

    @classmethod
    def from_result(cls, method: str, labels: str, run: str, result: StageResult) -> SummaryRow:
        """The row of a finished stage: its validation and test top-1."""
        return cls(method, labels, run, result.val_top1, result.test_top1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "summary row") -> SummaryRow:
        return cls(_get(data, "method", str, where), _get(data, "labels", str, where), _get(data, "run", str, where),
                   _number(data, "val_top1", where, optional=True), _number(data, "test_top1", where, optional=True))


def choose_best(rows: Sequence[SummaryRow]) -> SummaryRow | None:
    """The row with the highest *validation* top-1 (the first on ties); None when no row has one.
    The test score never takes part: choosing on it would make the reported test number optimistic."""
    scored = [r for r in rows if r.val_top1 is not None]
    return max(scored, key=lambda r: r.val_top1) if scored else None


def label_order(labels: str) -> tuple[int, float, str]:
    """Sort key for label fractions: per-class counts, then percentages, each ascending ("10/class", "1%", "10%")."""
    match = re.match(r"\s*(\d+(?:\.\d+)?)\s*(%?)", labels)
    if not match:
        return (2, 0.0, labels)
    return (1 if match.group(2) else 0, float(match.group(1)), labels)


@dataclass(frozen=True)
class PipelineSummary:
    """What ``simclrv2 pipeline`` leaves in ``RUN_DIR/summary.json``. Build ``best`` with :func:`choose_best`."""

    dataset: str
    architecture: str
    rows: list[SummaryRow]
    best: SummaryRow | None
    knn_init: float | None  # validation kNN top-1 of the random encoder
    knn_final: float | None  # ... and of the pretrained one
    wall_time_s: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": SUMMARY_FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = SUMMARY_FILE) -> PipelineSummary:
        _check_format(data, SUMMARY_FORMAT, where)
        rows = [SummaryRow.from_json(r, f"{where} row {i}") for i, r in enumerate(_get(data, "rows", list, where))]
        best = _get(data, "best", (dict, type(None)), where)
        return cls(_get(data, "dataset", str, where), _get(data, "architecture", str, where), rows,
                   SummaryRow.from_json(best, f"{where} best") if best is not None else None,
                   _number(data, "knn_init", where, optional=True), _number(data, "knn_final", where, optional=True),
                   _number(data, "wall_time_s", where),
                   {str(k): float(v) for k, v in _get(data, "stage_seconds", dict, where).items()})

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / SUMMARY_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> PipelineSummary:
        path = Path(run_dir) / SUMMARY_FILE
        return cls.from_json(_read_json(path, "the pipeline has not finished: run it with --resume"), str(path))

    def format_table(self) -> str:
        """Methods down, label fractions across, validation and test top-1 in % side by side."""
        fractions = sorted({r.labels for r in self.rows}, key=label_order)
        methods = list(dict.fromkeys(r.method for r in self.rows))
        cell = {(r.method, r.labels): r for r in self.rows}
        width = max([len(m) for m in methods] + [6])

        def pct(value: float | None) -> str:
            return f"{100 * value:6.2f}" if value is not None else f"{'-':>6}"

        lines = [f"{self.dataset}, {self.architecture}: top-1 (%), validation | test",
                 f"{'method':<{width}}" + "".join(f"  {f:>15}" for f in fractions),
                 f"{'':<{width}}" + "".join(f"  {'val':>6} | {'test':>6}" for _ in fractions)]
        for m in methods:
            rows = [cell.get((m, f)) for f in fractions]
            lines.append(f"{m:<{width}}" + "".join(
                f"  {pct(r.val_top1 if r else None)} | {pct(r.test_top1 if r else None)}" for r in rows))
        if self.best is not None:
            test = f", test {100 * self.best.test_top1:.2f}" if self.best.test_top1 is not None else ""
            lines.append(f"best on validation: {self.best.method} with {self.best.labels} labels "
                         f"(val {100 * self.best.val_top1:.2f}{test})")
        if self.knn_final is not None and self.knn_init is not None:
            lines.append(f"validation kNN: {100 * self.knn_final:.2f} pretrained vs {100 * self.knn_init:.2f} "
                         "at random init")
        return "\n".join(lines)


# --- embeddings for the report's 2-D picture ----------------------------------------------------------------

@dataclass(frozen=True)
class Embeddings:
    """Encoder features of some labelled images: (M, D) float ``features``, (M,) int ``labels`` in
    [0, len(classes)), and where they came from (``source``, e.g. "pretrained encoder, validation images")."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str

    def __post_init__(self) -> None:
        m = self.features.shape[0] if self.features.dim() == 2 else -1
        if m < 2 or self.features.shape[1] < 2 or self.labels.shape != (m,):
            raise SimCLRv2Error(f"embeddings need (M, D) features with M, D >= 2 and (M,) labels, got "
                                f"{tuple(self.features.shape)} and {tuple(self.labels.shape)}")
        if self.labels.min().item() < 0 or self.labels.max().item() >= len(self.classes):
            raise SimCLRv2Error(f"embedding labels must lie in [0, {len(self.classes)}) to name a class")

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / EMBEDDINGS_FILE
        save_checkpoint(path, features=self.features.float().cpu(), labels=self.labels.long().cpu(),
                        classes=list(self.classes), source=self.source)
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> Embeddings:
        payload = load_checkpoint(Path(run_dir) / EMBEDDINGS_FILE)
        try:
            return cls(payload["features"].float(), payload["labels"].long(), [str(c) for c in payload["classes"]],
                       str(payload["source"]))
        except (KeyError, AttributeError) as exc:
            raise _fail(str(Path(run_dir) / EMBEDDINGS_FILE), f"no {exc} in the file") from exc


def _check_format(data: Any, expected: str, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != expected:
        raise SimCLRv2Error(f"{where} is not a {expected} file (written by another program or an older "
                            "simclrv2); rerun the stage that wrote it")
    if data.get("format_version") != FORMAT_VERSION:
        raise _fail(where, f"format_version {data.get('format_version')!r}, this simclrv2 reads {FORMAT_VERSION}")


def _read_json(path: Path, if_missing: str) -> Any:
    if not path.is_file():
        raise SimCLRv2Error(f"{path} not found: {if_missing}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimCLRv2Error(f"cannot read {path} ({type(exc).__name__}); rerun the stage that wrote it") from exc


__all__ = ["STAGES", "ClassificationScores", "Embeddings", "EvalRecord", "KnnRecord", "PipelineSummary",
           "StageResult", "SummaryRow", "TrainRecord", "choose_best", "label_order", "metrics_record"]
