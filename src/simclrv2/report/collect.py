"""Reads what a run left behind (never writes): the typed files of :mod:`simclrv2.results` and the metric
records. A pipeline directory holds ``summary.json`` (or, unfinished, stage sub-directories); a stage directory
holds ``metrics.jsonl`` or ``result.json``. Optional pieces that are absent become notes on the page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simclrv2.checkpoint import read_metrics
from simclrv2.errors import SimCLRv2Error
from simclrv2.results import EMBEDDINGS_FILE, RESULT_FILE, SUMMARY_FILE, Embeddings, PipelineSummary, StageResult

METRICS_FILE = "metrics.jsonl"
AUGMENTATIONS_FILE = "augmentations.png"


@dataclass(frozen=True)
class Run:
    """One stage's run directory: its metric records and, once it finished, its result."""

    name: str
    records: list[dict[str, Any]]
    result: StageResult | None

    @property
    def stage(self) -> str | None:
        return self.result.stage if self.result else next((r["stage"] for r in self.records if "stage" in r), None)

    def series(self, event: str, key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of one event, sorted by epoch. A resumed run logs again the steps after its last
        checkpoint, so for a repeated epoch the later record wins."""
        points = {r["epoch"]: r[key] for r in self.records if r.get("event") == event and key in r}
        epochs = sorted(points)
        return epochs, [points[e] for e in epochs]


@dataclass
class ReportData:
    run_dir: Path
    is_pipeline: bool
    summary: PipelineSummary | None = None
    runs: dict[str, Run] = field(default_factory=dict)  # by directory name, pretraining first
    embeddings: Embeddings | None = None
    augmentations: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pretrain(self) -> Run | None:
        return next((r for r in self.runs.values() if r.stage == "pretrain"), None)


def _is_run(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / RESULT_FILE).is_file()


def load_run(path: Path) -> Run:
    result = StageResult.read(path) if (path / RESULT_FILE).is_file() else None  # absent while running
    return Run(path.resolve().name, read_metrics(path / METRICS_FILE), result)


def collect(run_dir: str | Path) -> ReportData:
    """Reads a pipeline directory or a single stage's run directory into :class:`ReportData`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SimCLRv2Error(f"run directory {run_dir} not found: pass the --run-dir of a pipeline or a stage")
    sub_runs = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and _is_run(p))
    has_summary = (run_dir / SUMMARY_FILE).is_file()
    if not (has_summary or sub_runs or _is_run(run_dir)):
        raise SimCLRv2Error(f"{run_dir} holds no run: expected {SUMMARY_FILE} (a pipeline) or {METRICS_FILE} "
                            "(a single stage); pass the --run-dir the run wrote to")
    data = ReportData(run_dir, is_pipeline=has_summary or not _is_run(run_dir))
    if not data.is_pipeline:
        data.runs[run_dir.resolve().name] = load_run(run_dir)
    else:
        if has_summary:
            data.summary = PipelineSummary.read(run_dir)
            names = ["pretrain", *(row.run for row in data.summary.rows)]
        else:
            data.notes.append(f"no {SUMMARY_FILE}: the pipeline has not finished; results are from its sub-runs")
            names = sub_runs
        for name in dict.fromkeys(names):  # unique, in order
            if Path(name).name != name or not _is_run(run_dir / name):  # never follow a name out of run_dir
                data.notes.append(f"run {name}/ named in {SUMMARY_FILE} has no results here")
            else:
                data.runs[name] = load_run(run_dir / name)
    if (run_dir / EMBEDDINGS_FILE).is_file():
        try:
            data.embeddings = Embeddings.load(run_dir)
        except SimCLRv2Error as exc:  # the rest of the page is still worth having
            data.notes.append(f"{EMBEDDINGS_FILE} is left out: {exc}")
    preview = run_dir / ("pretrain" if data.is_pipeline else "") / AUGMENTATIONS_FILE
    data.augmentations = preview if preview.is_file() else None
    return data
