"""The report's sections: each draws its figure from the run's data, or says plainly what is missing.

A builder takes the collected :class:`ReportData` and the report folder, writes at most one PNG there and
returns a :class:`Section`; ``page`` turns the sections into HTML.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simclrv2.report import plots
from simclrv2.report.collect import ReportData, RunData, is_number, summary_rows
from simclrv2.report.projection import principal_components

FIGURES = ("training_curves.png", "knn_accuracy.png", "accuracy_by_labels.png", "test_accuracy_curves.png",
           "confusion_matrix.png", "embeddings_pca.png")

STAGE_NAMES = {"pretrain": "pretraining", "finetune": "fine-tuning", "supervised": "supervised training",
               "distill": "distillation", "evaluate": "evaluation"}


@dataclass
class Section:
    title: str
    figure: str | None = None  # PNG file name inside the report folder
    caption: str = ""  # HTML
    body: str = ""  # HTML shown under the figure (a table)
    missing: str | None = None  # plain text: why there is nothing to show


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def esc(value: Any) -> str:
    return html.escape(str(value))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _all_runs(data: ReportData) -> list[RunData]:
    return ([data.pretrain] if data.pretrain else []) + list(data.runs.values())


def _run_labels(data: ReportData) -> dict[str, tuple[str, str]]:
    """Run directory name -> (method, label fraction) from summary.json, else (directory name, "")."""
    labels: dict[str, tuple[str, str]] = {}
    for row in summary_rows(data.summary, []) if data.summary else []:
        if isinstance(row.get("run"), str):
            labels.setdefault(row["run"], (row["method"], row["labels"]))
    return {name: labels.get(name, (name, "")) for name in data.runs}


def _architecture(config: dict[str, Any] | None) -> str | None:
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or "depth" not in model:
        return None
    sk = model.get("sk_ratio", 0) or 0
    text = f"ResNet-{model['depth']} {model.get('width_multiplier', 1):g}x" + (f"-SK{sk:g}" if sk else "")
    return text + (f", {model['head_layers']}-layer head" if "head_layers" in model else "")


def header_facts(data: ReportData) -> list[tuple[str, str]]:
    summary = data.summary or {}
    config = next((r.config for r in _all_runs(data) if r.config), None)
    data_section = config.get("data") if config else None
    if not isinstance(data_section, dict):
        data_section = {}
    dataset = summary.get("dataset") or data_section.get("dataset")
    wall = summary.get("wall_time_s")
    if is_number(wall):
        wall_text = _duration(wall)
    elif not data.is_pipeline and (span := _all_runs(data)[0].time_span_s()) is not None:
        wall_text = f"about {_duration(span)} (first to last metrics record)"
    else:
        wall_text = "unknown"
    if data.is_pipeline:
        kind = "pipeline"
    else:
        kind = f"single {_all_runs(data)[0].stage or 'stage'} run"
    facts = [("run", kind), ("dataset", dataset or "unknown"),
             ("architecture", summary.get("architecture") or _architecture(config) or "unknown"),
             ("wall time", wall_text)]
    best = summary.get("best")
    if isinstance(best, dict) and is_number(best.get("top1")):
        method, labels = best.get("method", "?"), best.get("labels", "?")
        facts.append(("best", f"{method} with {labels} labels: {_pct(best['top1'])}"))
    return facts


def training_section(data: ReportData, out: Path) -> Section:
    run = data.pretrain if data.is_pipeline or data.pretrain else next(iter(data.runs.values()))
    stage = run.stage if run else "pretrain"
    section = Section("Pretraining loss and learning rate" if stage == "pretrain"
                      else f"Training loss and learning rate ({STAGE_NAMES.get(stage, stage)})")
    if run is None:
        section.missing = "no pretrain/ run directory, so there are no pretraining curves"
        return section
    epochs, losses = run.series("train", "epoch", "loss", stage)
    lr_epochs, lrs = run.series("train", "epoch", "lr", stage)
    if not epochs and not lr_epochs:
        section.missing = f"{run.name}/metrics.jsonl has no training records (event \"train\")"
        return section
    section.figure = FIGURES[0]
    name = STAGE_NAMES.get(stage, stage)
    plots.plot_training(out / section.figure, epochs, losses, lr_epochs, lrs, name)
    loss_text = f"; loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else ""
    section.caption = (f"Training loss and learning rate of {esc(name)} per logged step, "
                       f"{len(epochs)} records over {max(epochs + lr_epochs):g} epochs{loss_text}.")
    return section


def knn_section(data: ReportData, out: Path) -> Section:
    section = Section("kNN accuracy during pretraining")
    run = data.pretrain
    if run is None:
        where = ("there is no pretrain/ run here" if data.is_pipeline
                 else f"this is a single {next(iter(data.runs.values())).stage or 'stage'} run")
        section.missing = f"{where}; the kNN monitor runs during pretraining"
        return section
    epochs, accuracies = run.series("knn", "epoch", "knn_top1", "pretrain")
    if not epochs:
        section.missing = (f"{run.name}/metrics.jsonl has no kNN records (event \"knn\"); the test split may "
                           "have no labels, or the run stopped before its first evaluation")
        knn = (data.summary or {}).get("knn")
        if isinstance(knn, dict) and is_number(knn.get("init")) and is_number(knn.get("final")):
            section.missing += (f". summary.json gives {_pct(knn['init'])} for the random encoder and "
                                f"{_pct(knn['final'])} after pretraining")
        return section
    section.figure = FIGURES[1]
    plots.plot_knn(out / section.figure, epochs, accuracies)
    start = "the randomly initialised encoder (epoch 0)" if epochs[0] == 0 else f"epoch {epochs[0]:g}"
    section.caption = (f"Top-1 of a cosine kNN classifier on the encoder's features, from {start} at "
                       f"{_pct(accuracies[0])} to epoch {epochs[-1]:g} at {_pct(accuracies[-1])}. "
                       "It tracks representation quality without training a classifier.")
    return section


def _fraction_key(label: str) -> tuple[int, float]:
    match = re.match(r"\s*(\d+(?:\.\d+)?)", label)
    return (0, float(match.group(1))) if match else (1, 0.0)


def accuracy_section(data: ReportData, out: Path) -> Section:
    section = Section("Accuracy by label fraction")
    if data.summary is None:
        section.missing = "there is no summary.json, and a table of methods by label fraction needs a pipeline"
        results = [r.result for r in data.runs.values() if r.result and is_number(r.result.get("top1"))]
        if not data.is_pipeline and results:
            section.missing += f"; this run's test top-1 is {_pct(results[0]['top1'])}"
        return section
    rows = summary_rows(data.summary, [])
    if not rows:
        section.missing = "summary.json lists no results (its \"rows\" are empty or malformed)"
        return section
    table = {(r["method"], r["labels"]): float(r["top1"]) for r in rows}
    runs = {(r["method"], r["labels"]): str(r.get("run", "")) for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fractions = sorted(dict.fromkeys(r["labels"] for r in rows), key=_fraction_key)
    section.figure = FIGURES[2]
    plots.plot_accuracy_bars(out / section.figure, methods, fractions, table)
    section.body = _table_html(methods, fractions, table, runs)
    section.caption = ("Test top-1 of every method by the fraction of training labels it used; the best "
                       "value of each column is in bold, and a cell's tooltip names its run directory.")
    return section


def eval_section(data: ReportData, out: Path) -> Section:
    section = Section("Test accuracy during fine-tuning and training")
    labels = _run_labels(data)
    curves = []
    for name, run in data.runs.items():
        epochs, accuracies = run.series("eval", "epoch", "test_top1")
        if epochs:
            curves.append((*labels[name], epochs, accuracies))
    if not curves:
        section.missing = ("no run logged test accuracy during training (event \"eval\" in metrics.jsonl)"
                           if data.runs else "no fine-tuning, supervised or distillation runs here")
        return section
    section.figure = FIGURES[3]
    plots.plot_eval_curves(out / section.figure, curves)
    section.caption = (f"Test top-1 after each evaluated epoch for the {len(curves)} run(s) that logged it "
                       "(fine-tuning, supervised baseline, distillation).")
    return section


def _best_run(data: ReportData) -> tuple[RunData | None, str]:
    """The run the confusion matrix shows and how it was chosen, or None and why there is none."""
    if not data.is_pipeline:
        return next(iter(data.runs.values()), None) or data.pretrain, "this run"
    best = (data.summary or {}).get("best")
    if not isinstance(best, dict) or not isinstance(best.get("run"), str):
        rows = summary_rows(data.summary, []) if data.summary else []
        rows = [r for r in rows if isinstance(r.get("run"), str)]
        if not rows:
            return None, "no summary.json names a best run"
        best = max(rows, key=lambda r: r["top1"])
    name = best["run"]
    how = f"the best model, {best.get('method', name)} with {best.get('labels', '?')} labels (run {name}/)"
    run = data.runs.get(name)
    return run, how if run else f"{how} has no run directory"


def _confusion_problem(result: dict[str, Any] | None) -> str | None:
    if result is None:
        return "has no result.json"
    matrix, classes = result.get("confusion_matrix"), result.get("classes")
    if not isinstance(matrix, list) or not isinstance(classes, list) or not classes:
        return "has a result.json without confusion_matrix and classes"
    c = len(classes)
    if len(matrix) != c or any(not isinstance(row, list) or len(row) != c for row in matrix):
        return f"has a confusion_matrix that is not {c} x {c} (one row and column per class)"
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for row in matrix for v in row):
        return "has a confusion_matrix with entries that are not counts"
    return None


def confusion_section(data: ReportData, out: Path) -> Section:
    section = Section("Confusion matrix")
    run, how = _best_run(data)
    if run is None:
        section.missing = how
        return section
    problem = _confusion_problem(run.result)
    if problem:
        section.missing = f"{how} {problem}"
        return section
    result = run.result
    classes = [str(c) for c in result["classes"]]
    section.figure = FIGURES[4]
    title = f"{run.name}: top-1 {_pct(result['top1'])}" if is_number(result.get("top1")) else run.name
    matrix = torch.tensor(result["confusion_matrix"], dtype=torch.float64)  # (C, C), rows = true class
    plots.plot_confusion(out / section.figure, matrix, classes, title)
    section.body = _per_class_html(classes, matrix)
    samples = f" on {result['num_samples']} test images" if isinstance(result.get("num_samples"), int) else ""
    section.caption = (f"Confusion matrix of {esc(how)}{samples}, normalised per true class: row i shows "
                       "where the images of class i were predicted, so the diagonal is each class's recall "
                       "(cells in %).")
    return section


def embedding_section(data: ReportData, out: Path) -> Section:
    section = Section("Embeddings in two dimensions")
    emb = data.embeddings
    if emb is None:
        section.missing = f"no readable embeddings.pt in {data.run_dir.name}/"
        return section
    coords, explained = principal_components(emb.features, 2)
    section.figure = FIGURES[5]
    plots.plot_embedding(out / section.figure, coords, emb.labels, emb.classes, explained, emb.source)
    m, d = emb.features.shape
    share = _pct(explained.sum().item())
    section.caption = (f"The {m} {esc(emb.source or 'test')} embeddings ({d}-D) projected on their two "
                       f"leading principal components ({share} of the variance), coloured by class. "
                       "PCA is linear: overlap here does not mean the classes are inseparable.")
    return section


def _table_html(methods: list[str], fractions: list[str], table: dict[tuple[str, str], float],
                runs: dict[tuple[str, str], str]) -> str:
    best = {f: max(round(100 * v, 1) for (m, g), v in table.items() if g == f) for f in fractions}
    head = "".join(f"<th>{esc(f)}</th>" for f in fractions)
    rows = []
    for method in methods:
        cells = []
        for f in fractions:
            if (method, f) not in table:
                cells.append('<td class="none">–</td>')
                continue
            text = _pct(table[method, f])
            if round(100 * table[method, f], 1) == best[f]:
                text = f"<strong>{text}</strong>"
            run = runs.get((method, f))
            title = f' title="run: {esc(run)}"' if run else ""
            cells.append(f"<td{title}>{text}</td>")
        rows.append(f'<tr><th scope="row">{esc(method)}</th>{"".join(cells)}</tr>')
    return (f'<table class="acc"><thead><tr><th>method \\ labels</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _per_class_html(classes: list[str], matrix: Any) -> str:
    """Recall per true class (the row-normalised diagonal), legible where the figure is dense."""
    rows = []
    diagonal, totals = matrix.diagonal().tolist(), matrix.sum(dim=1).tolist()
    for name, correct, total in zip(classes, diagonal, totals, strict=True):
        recall = _pct(correct / total) if total > 0 else "–"
        rows.append(f'<tr><th scope="row">{esc(name)}</th><td>{recall}</td><td>{total:g}</td></tr>')
    head = "<tr><th>true class</th><th>recall</th><th>test images</th></tr>"
    return (f'<table class="acc per-class"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


BUILDERS = (training_section, knn_section, accuracy_section, eval_section, confusion_section, embedding_section)
