"""Self-distillation in the scale study: each student against its own fine-tuned teacher (the one it was distilled
from, whose scores it records), since a teacher redone later is not the one the student learnt from; at each length
run, and with the labelled term against distillation only."""

from __future__ import annotations

from scale_stats import mean_sd
from scale_study import DISTILL_EPOCHS


def self_distilled(rows: list[dict], width: float, labels: str, epochs: int | None = DISTILL_EPOCHS) -> list[dict]:
    """The self-distilled runs of a size-table cell at one length (None: every length), by seed; rows from before
    the length was varied lack ``distill_epochs``: they ran the default."""
    return sorted((r for r in rows if r["method"] == "distilled" and r["part"] == "distill" and r["width"] == width
                   and r.get("labels") == labels
                   and epochs in (None, r.get("distill_epochs", DISTILL_EPOCHS))), key=lambda r: r["seed"])


def self_distillation_gain(students: list[dict], fine_tuned: dict[int, float]) -> list[float]:
    """Each student's test top-1 − its own teacher's, in the students' order: the teacher's score recorded with
    the student (``teacher_test_top1``), else the fine-tuned run of the same seed in the table. A student made from
    an earlier teacher, before its fine-tuned run was redone, is compared with that teacher, not with its
    replacement."""
    gains = []
    for r in students:
        teacher = r.get("teacher_test_top1", fine_tuned.get(r["seed"]))
        if teacher is not None and r.get("test_top1") is not None:
            gains.append(r["test_top1"] - teacher)
    return gains


def distill_recipe_table(rows: list[dict]) -> str:
    lines = ["| width | teacher (validation) | candidate | student validation top-1 |", "|---|---|---|---|"]
    teachers = {r["run"]: r["val_top1"] for r in rows}
    for r in sorted((r for r in rows if r["part"] == "distill-recipe"), key=lambda r: (r["width"], r["recipe"])):
        teacher = r["run"].removeprefix("distill-").rsplit("-e", 1)[0]
        lines.append(f"| {r['width']:g} | {teachers.get(teacher, float('nan')):.1f} | {r['recipe']} | "
                     f"{r['val_top1']:.1f} |")
    return "\n".join(lines)


def distill_length_table(rows: list[dict], cells: dict) -> str:
    """Self-distillation at every length run, for the cells run at more than one, each student against its own
    teacher; "" where none was."""
    lines = ["| width | labels | epochs | self-distilled | − its own teacher |", "|---|---|---|---|---|"]
    for (width, labels), cell in cells.items():
        lengths = sorted({r.get("distill_epochs", DISTILL_EPOCHS) for r in self_distilled(rows, width, labels, None)})
        for epochs in lengths if len(lengths) > 1 else []:
            runs = self_distilled(rows, width, labels, epochs)
            gain = self_distillation_gain(runs, cell["fine-tuned"])
            lines.append(f"| {width:g} | {labels} | {epochs} | {mean_sd([r['test_top1'] for r in runs])} | "
                         f"{mean_sd(gain)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def distill_labels_table(rows: list[dict], subsets: list[str]) -> str:
    """Self-distillation with the labelled term (``distill_alpha`` < 1) against distillation only, each student
    paired with the one of the same seed and the same teacher (its recorded teacher scores match); "" when none
    was run."""
    with_labels = [r for r in rows if r["part"] == "distill-labels" and r.get("test_top1") is not None]
    lines = ["| width | labels | epochs | distillation weight α | self-distilled with labels | distillation only "
             "(same teachers) | with − without (paired) |", "|---|---|---|---|---|---|---|"]
    settings = {(r["width"], r["labels"], r["distill_alpha"], r.get("distill_epochs", DISTILL_EPOCHS))
                for r in with_labels}
    for width, labels, alpha, epochs in sorted(settings, key=lambda s: (s[0], subsets.index(s[1]), s[2], s[3])):
        only = {r["seed"]: r for r in self_distilled(rows, width, labels, epochs)}
        pairs = [(r, only[r["seed"]]) for r in with_labels
                 if (r["width"], r["labels"], r["distill_alpha"], r.get("distill_epochs", DISTILL_EPOCHS))
                 == (width, labels, alpha, epochs) and r["seed"] in only
                 and only[r["seed"]].get("teacher_test_top1") == r.get("teacher_test_top1")]
        lines.append(f"| {width:g} | {labels} | {epochs} | {alpha:g} | {mean_sd([a['test_top1'] for a, _ in pairs])} | "
                     f"{mean_sd([b['test_top1'] for _, b in pairs])} | "
                     f"{mean_sd([a['test_top1'] - b['test_top1'] for a, b in pairs])} |")
    return "\n".join(lines) if with_labels else ""
