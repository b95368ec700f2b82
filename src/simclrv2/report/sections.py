"""The report's sections: each draws its figure from the run's typed data, or says plainly what is missing.
A builder takes :class:`ReportData` and the report folder, writes at most one PNG there, returns a Section."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simclrv2.atomic import atomic_write_bytes
from simclrv2.report import plots
from simclrv2.report.collect import AUGMENTATIONS_FILE, ReportData, Run
from simclrv2.results import EvalRecord, KnnRecord, SummaryRow, TrainRecord, label_order


@dataclass
class Section:
    title: str
    figure: str | None = None  # PNG file name inside the report folder
    caption: str = ""  # HTML
    body: str = ""  # HTML under the figure (a table)
    missing: str | None = None  # plain text: why there is nothing to show


def esc(value: Any) -> str:
    return html.escape(str(value))


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def duration(seconds: float) -> str:
    s = round(seconds)
    return (f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s" if s < 3600
            else f"{s // 3600} h {s % 3600 // 60:02d} min")


def _names(data: ReportData) -> dict[str, str]:
    """Run directory -> "method (labels)" from the summary, else the directory name."""
    rows = {r.run: f"{r.method} ({r.labels})" for r in data.summary.rows} if data.summary else {}
    return {name: rows.get(name, name) for name in data.runs}


def header_facts(data: ReportData) -> list[tuple[str, str]]:
    s = data.summary
    if s is not None:
        best = (f"{s.best.method} with {s.best.labels} labels: validation {pct(s.best.val_top1)}, test "
                f"{pct(s.best.test_top1)} (run {s.best.run}/)" if s.best else "no row has a validation score")
        return [("run", "pipeline"), ("dataset", s.dataset), ("architecture", s.architecture),
                ("wall time", duration(s.wall_time_s)), ("best, chosen on validation", best)]
    if data.is_pipeline:
        return [("run", "pipeline, unfinished")]
    run = next(iter(data.runs.values()))
    result = run.result
    scores = f"validation {pct(result.val_top1)}, test {pct(result.test_top1)}" if result else "not finished"
    return [("run", f"single {run.stage or 'stage'} run"), ("top-1", scores)]


def training_section(data: ReportData, out: Path) -> Section:
    section = Section("Training loss and learning rate")
    rows, captions = [], []
    for name, run in data.runs.items():
        loss, lr = run.series(TrainRecord.EVENT, "loss"), run.series(TrainRecord.EVENT, "lr")
        if loss[0]:
            rows.append((_names(data)[name], ("loss", *loss), ("lr", *lr)))
            captions.append(f"{esc(name)} {loss[1][0]:.3f} → {loss[1][-1]:.3f} over {loss[0][-1]:g} epochs")
    if not rows:
        section.missing = "no metrics.jsonl holds training records (event \"train\")"
        return section
    section.figure = "training_curves.png"
    plots.plot_training(out / section.figure, rows)
    section.caption = "Loss and learning rate of each stage per logged step; loss " + "; ".join(captions) + "."
    return section


def knn_section(data: ReportData, out: Path) -> Section:
    section = Section("kNN accuracy on validation during pretraining")
    run = data.pretrain
    epochs, accuracies = run.series(KnnRecord.EVENT, "knn_top1") if run else ([], [])
    if not epochs:
        section.missing = ("the pretraining run logged no kNN records (event \"knn\"): the kNN monitor may be off"
                           if run else "there is no pretraining run here; the kNN monitor runs during pretraining")
        s = data.summary
        if s is not None and s.knn_final is not None:
            section.missing += f". The summary gives {pct(s.knn_init)} at random init and {pct(s.knn_final)} after"
        return section
    section.figure = "knn_accuracy.png"
    plots.plot_lines(out / section.figure, [("kNN top-1", epochs, accuracies)], "epoch (0 = random initialisation)",
                     "validation kNN top-1 (%)", "kNN accuracy during pretraining")
    section.caption = (f"Top-1 of a cosine kNN classifier on the encoder's features of validation images, from "
                       f"{pct(accuracies[0])} at epoch {epochs[0]:g} to {pct(accuracies[-1])} at epoch "
                       f"{epochs[-1]:g}: representation quality without training a classifier.")
    return section


def accuracy_section(data: ReportData, out: Path) -> Section:
    section = Section("Accuracy by number of labels")
    rows = data.summary.rows if data.summary else []
    if not rows:
        section.missing = ("summary.json lists no results" if data.summary else
                           "there is no summary.json; the table of methods by label fraction needs a pipeline")
        return section
    fractions = sorted({r.labels for r in rows}, key=label_order)
    split = "test" if any(r.test_top1 is not None for r in rows) else "validation"  # test: the final number
    score = {r: r.test_top1 if split == "test" else r.val_top1 for r in rows}
    curves = [(m, *zip(*sorted((fractions.index(r.labels), score[r]) for r in rows
                                if r.method == m and score[r] is not None), strict=True))
              for m in dict.fromkeys(r.method for r in rows if score[r] is not None)]
    section.figure = "label_efficiency.png"
    plots.plot_lines(out / section.figure, curves, "labels", f"{split} top-1 (%)", "label efficiency",
                     categories=fractions, dashed=[c[0] for c in curves if c[0].startswith("supervised")])
    section.body = _table_html(rows, fractions, data.summary.best)
    section.caption = (f"{split.capitalize()} top-1 of each method by the labels it "
                       "used; the supervised baseline is dashed. In the table the best row, chosen on "
                       "validation, is in bold; test is read once and decides nothing.")
    return section


def val_curves_section(data: ReportData, out: Path) -> Section:
    section = Section("Validation accuracy during training")
    curves = [(_names(data)[name], *run.series(EvalRecord.EVENT, "val_top1")) for name, run in data.runs.items()]
    curves = [c for c in curves if c[1]]
    if not curves:
        section.missing = "no run logged validation accuracy during training (event \"eval\")"
        return section
    section.figure = "val_accuracy_curves.png"
    plots.plot_lines(out / section.figure, curves, "epoch", "validation top-1 (%)", "validation accuracy")
    section.caption = f"Validation top-1 after each evaluated epoch, for the {len(curves)} run(s) that logged it."
    return section


def _best_run(data: ReportData) -> tuple[Run | None, str]:
    """The run whose validation confusion matrix is shown and how it was chosen, or None and why not."""
    if not data.is_pipeline:
        return next(iter(data.runs.values())), "this run"
    best = data.summary.best if data.summary else None
    if best is None:
        return None, "no summary.json names a best row (chosen on validation)"
    how = f"the best row on validation, {best.method} with {best.labels} labels (run {best.run}/)"
    return data.runs.get(best.run), how


def confusion_section(data: ReportData, out: Path) -> Section:
    section = Section("Confusion matrix on validation")
    run, how = _best_run(data)
    scores = run.result.val if run and run.result else None
    if scores is None:
        section.missing = f"{how} has no validation scores in its result.json" if run else how
        return section
    section.figure = "confusion_matrix.png"
    plots.plot_confusion(out / section.figure, scores.confusion, scores.classes,
                         f"{run.name}: validation top-1 {pct(scores.top1)}")
    recall = "".join(f'<tr><th scope="row">{esc(c)}</th><td>{pct(scores.per_class.get(c))}</td>'
                     f"<td>{sum(row)}</td></tr>" for c, row in zip(scores.classes, scores.confusion, strict=True))
    section.body = ('<table class="acc per-class"><thead><tr><th>true class</th><th>recall</th><th>validation '
                    f"images</th></tr></thead><tbody>{recall}</tbody></table>")
    section.caption = (f"Confusion matrix of {esc(how)} on {scores.num_samples} validation images, normalised "
                       "per true class: row i shows where class i went, so the diagonal is each class's recall.")
    return section


def embedding_section(data: ReportData, out: Path) -> Section:
    section = Section("Embeddings in two dimensions")
    emb = data.embeddings
    if emb is None:
        section.missing = f"no readable embeddings.pt in {data.run_dir.name}/"
        return section
    coords, explained = plots.pca_2d(emb.features)
    section.figure = "embeddings_pca.png"
    plots.plot_embedding(out / section.figure, coords, emb.labels, emb.classes, explained, emb.source)
    m, d = emb.features.shape
    section.caption = (f"{m} embeddings ({d}-D; {esc(emb.source)}) on their two leading principal components "
                       f"({pct(explained.sum().item())} of the variance), coloured by class. PCA is linear: "
                       "overlap here does not mean the classes are inseparable.")
    return section


def augmentation_section(data: ReportData, out: Path) -> Section:
    section = Section("Augmented views")
    if data.augmentations is None:
        section.missing = f"the pretraining run left no {AUGMENTATIONS_FILE}"
        return section
    section.figure = AUGMENTATIONS_FILE
    atomic_write_bytes(out / section.figure, data.augmentations.read_bytes())
    section.caption = "Pairs of augmented views as pretraining saw them."
    return section


def _table_html(rows: list[SummaryRow], fractions: list[str], best: SummaryRow | None) -> str:
    cell = {(r.method, r.labels): r for r in rows}
    head = "".join(f'<th colspan="2">{esc(f)}</th>' for f in fractions)
    sub = '<th>val</th><th>test</th>' * len(fractions)
    body = []
    for method in dict.fromkeys(r.method for r in rows):
        cells = []
        for f in fractions:
            r = cell.get((method, f))
            if r is None:
                cells.append('<td class="none">–</td><td class="none">–</td>')
                continue
            text = [pct(r.val_top1), pct(r.test_top1)]
            if r == best:
                text = [f"<strong>{t}</strong>" for t in text]
            cells.append("".join(f'<td title="run: {esc(r.run)}">{t}</td>' for t in text))
        body.append(f'<tr><th scope="row">{esc(method)}</th>{"".join(cells)}</tr>')
    return (f'<table class="acc"><thead><tr><th rowspan="2">method \\ labels</th>{head}</tr><tr>{sub}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>")


BUILDERS = (training_section, knn_section, accuracy_section, val_curves_section, confusion_section,
            embedding_section, augmentation_section)
FIGURES = ("training_curves.png", "knn_accuracy.png", "label_efficiency.png", "val_accuracy_curves.png",
           "confusion_matrix.png", "embeddings_pca.png", AUGMENTATIONS_FILE)
