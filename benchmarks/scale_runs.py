"""A run of the scale study and its line of the results file: the facts that name it, its scores, and the merge of
an invocation's runs into the file that scale_report.py and the README read (the file is the study's memory
across invocations, so a merge never drops an earlier run nor moves it out of the table it was made for)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simclrv2.config import Config
from simclrv2.results import RESULT_FILE, StageResult


@dataclass(frozen=True)
class Run:
    """One stage run of the study: where it lives, what it is, and its config."""

    name: str
    stage: str  # pretrain, finetune, supervised, distill
    part: str
    facts: dict[str, Any]  # width, head_layers, memory, method, head_layer, labels, seed, recipe, ...
    config: Config


def slug(value: object) -> str:
    return str(value).replace("%", "pct").replace("/", "-per-")


def percent(top1: float | None) -> float | None:
    return None if top1 is None else round(100 * top1, 2)


def row(run: Run, result: StageResult, out: Path) -> dict[str, Any]:
    """One line of the results file: the run's facts, its scores in %, and its wall time when measured."""
    record = {"run": run.name, "part": run.part, **run.facts,
              "val_top1": percent(result.val_top1), "test_top1": percent(result.test_top1)}
    if run.stage == "pretrain":
        record["knn_val"] = percent(result.details.get("knn_top1"))
    if run.stage == "distill" and (Path(result.details["teacher"]) / RESULT_FILE).exists():
        # the teacher's scores beside the student's: a later rerun of the teacher replaces the teacher's own row
        teacher = StageResult.read(result.details["teacher"])
        record.update(teacher_val_top1=percent(teacher.val_top1), teacher_test_top1=percent(teacher.test_top1))
    sidecar = out / run.name / "study.json"
    if sidecar.exists():
        record["wall_s"] = json.loads(sidecar.read_text())["wall_s"]
    return record


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Run name -> its line of the results file (empty when there is none yet)."""
    if not path.exists():
        return {}
    return {r["run"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def write_results(done: Iterator[tuple[Run, StageResult]] | Any, out: Path, path: Path) -> None:
    """Merges this invocation's runs into ``path`` (runs of earlier invocations are kept). A run keeps the part
    it was first recorded under, unless that was only "recipe" (a grid candidate later chosen): another part
    reusing a finished run must not move it out of the table it was made for."""
    rows = read_results(path)
    records = []
    for run, result in done:
        record = row(run, result, out)
        earlier = rows.get(run.name, {}).get("part", "recipe")
        if earlier != "recipe" and record["part"] != earlier:
            record["part"] = earlier
        records.append(record)
    write_rows(records, path)


def write_rows(records: list[dict[str, Any]], path: Path) -> None:
    """Merges ``records`` into ``path`` by run name, atomically."""
    rows = read_results(path)
    rows.update({r["run"]: r for r in records})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    tmp.replace(path)
