"""What runs write for people and the report: typed results with one name for a score, ``top1``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from simclrv2.checkpoint import atomic_write_text
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.metrics import classification_report

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class ClassificationScores:
    """Top-1 (a fraction), recall per class and the confusion matrix (rows true, columns predicted)."""

    top1: float
    per_class: dict[str, float | None]
    confusion: list[list[int]]
    classes: list[str]

    @classmethod
    def from_predictions(cls, predictions: torch.Tensor, labels: torch.Tensor, classes: list[str] | tuple[str, ...]
                         ) -> ClassificationScores:
        report = classification_report(predictions, labels, list(classes))
        return cls(report["top1"], report["per_class"], report["confusion_matrix"], report["classes"])

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> ClassificationScores | None:
        return None if values is None else cls(**values)


@dataclass(frozen=True)
class StageResult:
    """One stage's outcome. ``val`` is the validation split (held-out training images, the one that chooses
    settings); ``test`` the test split, read once at the end and never used to choose anything."""

    stage: str
    run_dir: str
    checkpoint: str | None
    val: ClassificationScores | None
    test: ClassificationScores | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def val_top1(self) -> float | None:
        return self.val.top1 if self.val is not None else self.details.get("knn_top1")

    @property
    def test_top1(self) -> float | None:
        return self.test.top1 if self.test is not None else self.details.get("test_knn_top1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> StageResult:
        return cls(stage=values["stage"], run_dir=values["run_dir"], checkpoint=values.get("checkpoint"),
                   val=ClassificationScores.from_json(values.get("val")),
                   test=ClassificationScores.from_json(values.get("test")), details=values.get("details", {}))

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RESULT_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> StageResult:
        path = Path(run_dir) / RESULT_FILE
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SimCLRv2Error(f"{path} not found: has the run in {run_dir} finished?") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SimCLRv2Error(f"{path} is not a simclrv2 result ({type(exc).__name__}); re-run the stage with "
                                "--overwrite") from exc


SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class SummaryRow:
    """One cell group of the pipeline's table: a method at a label subset, scored on validation and test."""

    method: str
    labels: str
    run: str
    val_top1: float | None
    test_top1: float | None


def choose_best(rows: list[SummaryRow]) -> SummaryRow | None:
    """The best row by VALIDATION top-1; the test split never decides."""
    scored = [row for row in rows if row.val_top1 is not None]
    return max(scored, key=lambda row: row.val_top1) if scored else None


@dataclass(frozen=True)
class PipelineSummary:
    dataset: str
    architecture: str
    rows: list[SummaryRow]
    best: SummaryRow | None
    knn_init: float | None
    knn_final: float | None
    wall_time_s: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> PipelineSummary:
        rows = [SummaryRow(**row) for row in values["rows"]]
        best = SummaryRow(**values["best"]) if values.get("best") else None
        return cls(values["dataset"], values["architecture"], rows, best, values.get("knn_init"),
                   values.get("knn_final"), values.get("wall_time_s", 0.0), values.get("stage_seconds", {}))

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / SUMMARY_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> PipelineSummary:
        path = Path(run_dir) / SUMMARY_FILE
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SimCLRv2Error(f"{path} not found: has the pipeline in {run_dir} finished?") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SimCLRv2Error(f"{path} is not a simclrv2 pipeline summary ({type(exc).__name__})") from exc

    def format_table(self) -> str:
        """Methods down, label subsets across, validation and test top-1 in %; the best row (chosen on
        validation) marked."""
        subsets = list(dict.fromkeys(row.labels for row in self.rows))
        methods = list(dict.fromkeys(row.method for row in self.rows))
        cell = {(row.method, row.labels): row for row in self.rows}
        width = max([len(m) for m in methods] + [6]) + 2

        def pct(value: float | None) -> str:
            return f"{100 * value:6.2f}" if value is not None else f"{'-':>6}"

        lines = [f"{self.dataset}, {self.architecture}: top-1 (%), validation / test",
                 f"{'method':<{width}}" + "".join(f"{s:>17}" for s in subsets)]
        for method in methods:
            parts = []
            for subset in subsets:
                row = cell.get((method, subset))
                mark = "*" if row is not None and row == self.best else " "
                parts.append(f"{pct(row.val_top1 if row else None)} / {pct(row.test_top1 if row else None)}{mark}"
                             if row else f"{'-':>17}")
            lines.append(f"{method:<{width}}" + "".join(f"{p:>17}" for p in parts))
        if self.best is not None:
            lines.append(f"* best on validation: {self.best.method} at {self.best.labels}")
        if self.knn_final is not None and self.knn_init is not None:
            lines.append(f"kNN on validation: {100 * self.knn_final:.2f} pretrained vs {100 * self.knn_init:.2f} "
                         "at random init")
        return "\n".join(lines)
