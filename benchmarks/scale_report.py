"""Tables, paired differences, the claims and the plot of the scale study, from its committed per-run results.

    python benchmarks/scale_report.py [--results benchmarks/results/scale_study.jsonl] [--readme]

Writes benchmarks/results/scale_study.md and scale_study.png; with ``--readme`` also the README's block. Every
number comes from the JSONL that benchmarks/scale_study.py writes; nothing here trains or reads images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from readme_block import write_readme
from scale_depth import depth_cells, depth_recipe_table, depth_seed_cells, depth_table, depths_of
from scale_stats import (
    STAGE_METHOD,
    _paired_verdict,
    _verdict,
    _within_spread,
    by_seed,
    encoder_params,
    mean_sd,
    paired,
    read_rows,
)
from scale_study import DISTILL_EPOCHS

from simclrv2 import load_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_study.jsonl"
COMMAND = "python benchmarks/scale_study.py && python benchmarks/scale_report.py --readme"


def grid_rows(rows: list[dict]) -> dict[tuple[float, str], list[dict]]:
    """(width, method) -> the recipe grid's candidates (1 % labels, seed 0, head layer 1, 3-layer head, no
    memory). A run is found by its facts, not its ``part``: the chosen candidate is also a run of the size part."""
    grids: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        if (r["part"] in ("recipe", "size") and r.get("labels") == "1%" and r["seed"] == 0 and "recipe" in r
                and r.get("head_layer") == 1 and r["head_layers"] == 3 and not r["memory"] and not r.get("depth")):
            grids.setdefault((r["width"], r["method"]), []).append(r)
    return {key: sorted(rs, key=lambda r: r["recipe"]) for key, rs in sorted(grids.items())}


def choice_rows(rows: list[dict]) -> dict[tuple[float, str], dict]:
    """(width, method) -> the study's recorded choice for the size part's network (3-layer head, no memory)."""
    return {(r["width"], STAGE_METHOD[r["stage"]]): r for r in rows
            if r["method"] == "choice" and r["head_layers"] == 3 and not r["memory"] and not r.get("depth")}


def chosen_recipes(rows: list[dict]) -> dict[tuple[float, str], str]:
    """(width, method) -> the recipe the study chose on validation: its recorded choice, else (results written
    before choices were recorded) the grid candidate with the best validation top-1."""
    chosen = {key: max(candidates, key=lambda r: r["val_top1"])["recipe"]
              for key, candidates in grid_rows(rows).items()}
    chosen.update({key: r["recipe"] for key, r in choice_rows(rows).items()})
    return chosen


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


# parts whose fine-tuned runs match the size table's facts but come from another pretraining recipe
OTHER_PRETRAINING_PARTS = ("temperature", "pretrain-epochs")


def size_table(rows: list[dict], widths: list[float], subsets: list[str]) -> tuple[str, dict]:
    """Test top-1 per width and subset for each method, and fine-tuned − supervised paired by seed."""
    lines = ["| width (encoder params) | labels | supervised | fine-tuned (layer 1) | self-distilled | "
             "fine-tuned − supervised (paired) |", "|---|---|---|---|---|---|"]
    cells: dict = {}
    chosen = chosen_recipes(rows)
    # the plain encoder's cells, from seed 0's pretraining; Selective Kernels and other pretrainings get their own
    rows = [r for r in rows if not r.get("sk_ratio") and not r.get("pretrain_seed")
            and r["part"] not in OTHER_PRETRAINING_PARTS]
    for width in widths:
        for labels in subsets:
            common = {"width": width, "labels": labels, "head_layers": 3, "memory": 0, "head_layer": 1}
            sup = by_seed(rows, method="supervised", recipe=chosen.get((width, "supervised")), **common)
            ft = by_seed(rows, method="fine-tuned", recipe=chosen.get((width, "fine-tuned")), **common)
            students = self_distilled(rows, width, labels)
            kd = {r["seed"]: r["test_top1"] for r in students}
            gain = paired(ft, sup)
            cells[(width, labels)] = {"supervised": sup, "fine-tuned": ft, "distilled": kd, "gain": gain,
                                      "distill_gain": self_distillation_gain(students, ft)}
            lines.append(f"| {width:g} ({encoder_params(width):.2f} M) | {labels} | {mean_sd(list(sup.values()))} | "
                         f"{mean_sd(list(ft.values()))} | {mean_sd(list(kd.values()))} | {mean_sd(gain)} |")
    return "\n".join(lines), cells


def recipe_table(rows: list[dict]) -> str:
    """Every candidate's validation top-1 as the choice saw it (a recorded choice keeps the scores it was made on,
    even where a candidate was later rerun), the chosen one in bold."""
    scores = {key: {r["recipe"]: r["val_top1"] for r in candidates} for key, candidates in grid_rows(rows).items()}
    scores.update({key: r["scores"] for key, r in choice_rows(rows).items()})
    chosen = chosen_recipes(rows)
    lines = ["| width | stage | candidate | validation top-1 |", "|---|---|---|---|"]
    for (width, method), candidates in sorted(scores.items()):
        for recipe, val in sorted(candidates.items()):
            mark = "**" if chosen.get((width, method)) == recipe else ""
            lines.append(f"| {width:g} | {method} | {mark}{recipe}{mark} | {val:.1f} |")
    return "\n".join(lines)


def distill_recipe_table(rows: list[dict]) -> str:
    lines = ["| width | teacher (validation) | candidate | student validation top-1 |", "|---|---|---|---|"]
    teachers = {r["run"]: r["val_top1"] for r in rows}
    for r in sorted((r for r in rows if r["part"] == "distill-recipe"), key=lambda r: (r["width"], r["recipe"])):
        teacher = r["run"].removeprefix("distill-").rsplit("-e", 1)[0]
        lines.append(f"| {r['width']:g} | {teachers.get(teacher, float('nan')):.1f} | {r['recipe']} | "
                     f"{r['val_top1']:.1f} |")
    return "\n".join(lines)


def pretrain_table(rows: list[dict]) -> str:
    # no wall time here: a resumed run's covers only its last part, and the cores were shared
    lines = ["| pretraining run | epochs | validation kNN top-1 |", "|---|---|---|"]
    for r in rows:
        if r["method"] == "pretraining":
            lines.append(f"| {r['run']} | {r['pretrain_epochs']} | {_one_decimal(r.get('knn_val'))} |")
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


def head_rows(rows: list[dict], per_seed: bool = False) -> list[dict]:
    """The head part's fine-tuned runs, found by their facts: its 3-layer head, layer-1 runs are the size part's
    runs at the head width (same pretraining, recipe and name), recorded under "size". With ``per_seed``, the runs
    whose seed s fine-tunes a pretraining of seed s (the pretraining-seeds part's, seed 0's being the head part's);
    none until that part reached more than the 3-layer head's layer 1, which it runs for the size claims."""
    head = [r for r in rows if r["part"] == "head"]
    if not head:
        return []
    width, recipe = head[0]["width"], head[0]["recipe"]
    fine_tuned = [r for r in rows if r["method"] == "fine-tuned" and r["width"] == width and r["recipe"] == recipe
                  and not r["memory"] and not r.get("sk_ratio")]
    shared = [r for r in fine_tuned if r["part"] in ("head", "size")]
    if not per_seed:
        return shared
    length = _size_length(rows)
    own = [r for r in fine_tuned if r["part"] == "pretraining-seeds" and _at_length(r, length)]
    if all((r["head_layers"], r["head_layer"]) == (3, 1) for r in own):
        return []
    return [r for r in shared if r["seed"] == 0] + own


def chosen_head_layers(head: list[dict]) -> dict[tuple[int, str], int]:
    """(head layers, labels) -> the layer to fine-tune from, chosen by the best mean validation top-1 over seeds:
    the layer is a setting like a learning rate, so it is chosen without test."""
    chosen = {}
    for heads, labels in {(r["head_layers"], r["labels"]) for r in head}:
        means = {layer: statistics.fmean(vals) for layer in range(heads + 1)
                 if (vals := [r["val_top1"] for r in head if r["head_layers"] == heads and r["labels"] == labels
                              and r["head_layer"] == layer and r.get("val_top1") is not None])}
        if means:
            chosen[(heads, labels)] = max(means, key=means.get)
    return chosen


def head_table(head: list[dict], subsets: list[str]) -> str:
    """Test top-1 of the ``head_rows`` from every layer of every depth, the layer chosen on validation in bold."""
    lines = ["| head layers | fine-tuned from layer | " + " | ".join(subsets) + " |",
             "|---|---|" + "---|" * len(subsets)]
    chosen = chosen_head_layers(head)
    for heads in sorted({r["head_layers"] for r in head}):
        for layer in range(heads + 1):
            cells = [mean_sd(list(by_seed(head, head_layers=heads, head_layer=layer, labels=s).values()))
                     for s in subsets]
            cells = [f"**{c}**" if chosen.get((heads, s)) == layer else c for c, s in zip(cells, subsets, strict=True)]
            lines.append(f"| {heads} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _head_claims(head: list[dict], subsets: list[str], pretrainings: str) -> list[str]:
    """The paper's head claims on ``head_rows``: layer 1 beats layer 0 of the 3-layer head (10 per class), and per
    label subset and pair of neighbouring depths, the deeper head beats the shallower one, each fine-tuned from its
    layer chosen on validation (``chosen_head_layers``), paired by seed on test. ``pretrainings`` names rows whose
    seeds come from other pretrainings than the head table's."""
    out = []
    three = [r for r in head if r["head_layers"] == 3 and r.get("labels") == "10/class"]
    layer_gain = paired(by_seed(three, head_layer=1), by_seed(three, head_layer=0))
    if layer_gain:
        out.append(f"| fine-tuning from head layer 1 − layer 0, 3-layer head (10 per class{pretrainings}) ≥ 0 | "
                   f"layer 1 best, most so with few labels (ImageNet) | {mean_sd(layer_gain)} | "
                   f"{_paired_verdict(layer_gain, statistics.fmean(layer_gain) >= 0)} |")
    chosen = chosen_head_layers(head)
    depths = sorted({r["head_layers"] for r in head})
    for labels in subsets:
        for shallow, deep in zip(depths, depths[1:], strict=False):
            if (deep, labels) not in chosen or (shallow, labels) not in chosen:
                continue
            gain = paired(*(by_seed(head, head_layers=h, head_layer=chosen[(h, labels)], labels=labels)
                            for h in (deep, shallow)))
            if gain:
                out.append(f"| {deep}-layer head − {shallow}-layer head, each from its layer chosen on validation "
                           f"({labels}{pretrainings}) ≥ 0 | deeper is better, most so with few labels (ImageNet) | "
                           f"layer {chosen[(deep, labels)]} − layer {chosen[(shallow, labels)]}: {mean_sd(gain)} | "
                           f"{_paired_verdict(gain, statistics.fmean(gain) >= 0)} |")
    return out


def memory_table(rows: list[dict], cells: dict, subsets: list[str], base_momentum: float) -> str:
    """Fine-tuned test top-1 with and without a memory of negatives in pretraining, paired by seed, per memory size
    and EMA momentum (rows without ``memory_momentum`` ran the base config's)."""
    memory = [r for r in rows if r["part"] == "memory"]
    lines = ["| labels | negatives in memory | EMA momentum | kNN after pretraining, with / without | fine-tuned, "
             "with memory | without (same width) | with − without (paired) |", "|---|---|---|---|---|---|---|"]
    settings = sorted({(r["memory"], r.get("memory_momentum", base_momentum)) for r in memory})
    for labels in subsets:
        for size, momentum in settings:
            runs = [r for r in memory if r["memory"] == size and r["labels"] == labels
                    and r.get("memory_momentum", base_momentum) == momentum]
            if not runs or (runs[0]["width"], labels) not in cells:
                continue
            width = runs[0]["width"]
            # the memory part's runs fine-tune its seed-0 pretraining, named as scale_study names it
            name = f"pretrain-w{width}-h3-mem{size}" + ("" if momentum == base_momentum else f"-m{momentum:g}")
            knn_pair = _knn_pair(rows, f"{name}-s0", f"pretrain-w{width}-h3-s0")
            with_memory, without = by_seed(runs), cells[(width, labels)]["fine-tuned"]
            lines.append(f"| {labels} | {size} | {momentum:g} | {knn_pair} | {mean_sd(list(with_memory.values()))} | "
                         f"{mean_sd(list(without.values()))} | {mean_sd(paired(with_memory, without))} |")
    return "\n".join(lines)


def selective_kernels_table(rows: list[dict], cells: dict, subsets: list[str]) -> str:
    """Test top-1 of each width's encoder with Selective Kernels against the size part's plain encoder of that
    width (same recipes), fine-tuned and supervised only, each paired by seed, with the encoders' sizes and kNN
    after pretraining."""
    sk = [r for r in rows if r["part"] == "selective-kernels"]
    if not sk:
        return ""
    sizes, lines = [], ["| width | labels | method | Selective Kernels | plain | Selective Kernels − plain (paired) |",
                        "|---|---|---|---|---|---|"]
    for width in sorted({r["width"] for r in sk}):
        of_width = [r for r in sk if r["width"] == width]
        ratio = of_width[0]["sk_ratio"]
        with_sk, plain = (_knn_of(rows, f"pretrain-w{width}-h3{sk}-s0") for sk in (f"-sk{ratio:g}", ""))
        sizes.append(f"Width {width:g}: {encoder_params(width, ratio):.2f} M encoder parameters with "
                     f"Selective Kernels (kNN {_one_decimal(with_sk)} after pretraining), "
                     f"{encoder_params(width):.2f} M without (kNN {_one_decimal(plain)}).")
        for labels in subsets:
            for method in ("fine-tuned", "supervised"):
                with_sk = by_seed(of_width, labels=labels, method=method)
                if with_sk and (width, labels) in cells:
                    plain = cells[(width, labels)][method]
                    lines.append(f"| {width:g} | {labels} | {method} | {mean_sd(list(with_sk.values()))} | "
                                 f"{mean_sd(list(plain.values()))} | {mean_sd(paired(with_sk, plain))} |")
    return "\n".join(sizes + [""] + lines)


def _knn_of(rows: list[dict], pretraining: str) -> float | None:
    """The validation kNN of the pretraining run named ``pretraining`` (as scale_study names it), if recorded."""
    return next((r.get("knn_val") for r in rows if r["run"] == pretraining), None)


def _knn_pair(rows: list[dict], first: str, second: str) -> str:
    """"a / b": the kNN of two named pretrainings, side by side in one table cell."""
    return f"{_one_decimal(_knn_of(rows, first))} / {_one_decimal(_knn_of(rows, second))}"


def _one_decimal(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _selective_kernels_claims(rows: list[dict], cells: dict, subsets: list[str]) -> list[str]:
    """Selective Kernels against the size table's plain encoder, fine-tuned, from one pretraining each."""
    sk = [r for r in rows if r["part"] == "selective-kernels" and r["method"] == "fine-tuned"]
    gains = {(w, labels): paired(by_seed(sk, width=w, labels=labels), cells[(w, labels)]["fine-tuned"])
             for w in {r["width"] for r in sk} for labels in subsets if (w, labels) in cells}
    return _sk_claim_rows(gains, subsets, "")


def _sk_claim_rows(gains: dict[tuple[float, str], list[float]], subsets: list[str], pretrainings: str) -> list[str]:
    """Per label subset, Selective Kernels − plain encoder (fine-tuned, paired by seed) at every width that has
    both: the claim holds where the mean gain is positive at each of them. ``pretrainings`` names gains measured
    with other pretrainings than the size table's."""
    out = []
    for labels in subsets:
        per_width = [(w, gain) for (w, lab), gain in sorted(gains.items()) if lab == labels and gain]
        if per_width:
            claim_text = f"Selective Kernels − plain encoder, fine-tuned ({labels}{pretrainings}) > 0 at every width"
            out.append(_every_width_claim(claim_text, SK_PAPER, per_width))
    return out


def temperature_table(rows: list[dict], base_temperature: float) -> tuple[str, float | None]:
    """Fine-tuned validation top-1 per pretraining temperature (rows from before the fact was recorded were
    pretrained at the base config's temperature), and the temperature with the best mean: the choice."""
    swept = [r for r in rows if r["part"] == "temperature"]
    if not swept:
        return "", None
    like = {k: swept[0][k] for k in ("width", "labels", "recipe", "head_layers", "memory", "head_layer")}
    finetuned = [r for r in rows if r["part"] in ("temperature", "size") and r["method"] == "fine-tuned"
                 and all(r.get(k) == v for k, v in like.items())]
    lines = [f"| NT-Xent τ | kNN top-1 after pretraining | fine-tuned validation top-1 ({like['labels']}) | test |",
             "|---|---|---|---|"]
    means = {}
    for tau in sorted({r.get("pretrain_temperature", base_temperature) for r in finetuned}):
        runs = [r for r in finetuned if r.get("pretrain_temperature", base_temperature) == tau]
        # seed 0's pretraining at τ, named as scale_study names it
        knn = _knn_of(rows, f"pretrain-w{like['width']}-h{like['head_layers']}"
                      + ("" if tau == base_temperature else f"-t{tau}") + "-s0")
        means[tau] = statistics.fmean(r["val_top1"] for r in runs)
        lines.append(f"| {tau:g} | {'–' if knn is None else knn} | {mean_sd([r['val_top1'] for r in runs])} | "
                     f"{mean_sd([r['test_top1'] for r in runs])} |")
    return "\n".join(lines), max(means, key=means.get)


def claim(rows: list[dict], cells: dict, widths: list[float], subsets: list[str]) -> list[str]:
    """The goal rows of the issue that the finished runs can answer, each with its numbers and verdict."""
    out = _size_claims(cells, widths, subsets, "")
    replicated = pretraining_seed_cells(rows, cells)
    out += _size_claims(replicated, widths, subsets, PRETRAINING_PER_SEED)
    big_to_small = by_seed(rows, method="big-to-small", width=0.25, labels="1%")
    if big_to_small and (0.25, "1%") in cells:
        gain = paired(big_to_small, cells[(0.25, "1%")]["fine-tuned"])
        if gain:
            out.append(f"| big-to-small student (width 0.25) − width-0.25 fine-tuned (1 %) ≥ +2 | a ResNet-50 "
                       f"student of a big teacher beats ResNet-50 fine-tuned (ImageNet) | {mean_sd(gain)} | "
                       f"{_paired_verdict(gain, statistics.fmean(gain) >= 2)} |")
    if "10/class" in subsets:
        out += _best_pipeline_claim(rows, cells, widths)
    out += _self_distillation_claims(cells, widths, subsets)
    out += _head_claims(head_rows(rows), subsets, "")
    out += _head_claims(head_rows(rows, per_seed=True), subsets, PRETRAINING_PER_SEED)
    out += _selective_kernels_claims(rows, cells, subsets)
    sk = pretraining_seed_variant_gains(rows, replicated, "selective-kernels")
    out += _sk_claim_rows({key: cell["gain"] for key, cell in sk.items()}, subsets, PRETRAINING_PER_SEED)
    for epochs, longer in pretraining_length_cells(rows, cells).items():
        out += _size_claims(longer, widths, subsets, f"; pretrained {epochs} epochs")
    for epochs, longer in pretraining_length_cells(rows, replicated, per_seed=True).items():
        out += _size_claims(longer, widths, subsets, f"; pretrained {epochs} epochs{PRETRAINING_PER_SEED}")
    return out


def _depth_claims(by_width: dict[float, dict], subsets: list[str], pretrainings: str = "") -> list[str]:
    """The title claim again with depth as the size: fine-tuned − supervised grows from ResNet-18 to the deepest
    encoder at one width."""
    out = []
    for width, cells in by_width.items():
        out += _size_claims(cells, depths_of(cells), subsets, f"; width {width:g}{pretrainings}", axis="depth",
                            name=lambda depth: f"ResNet-{depth}")
    return out


def _width_name(width: float) -> str:
    return f"width {width:g}"


def _size_claims(cells: dict, widths: list[float], subsets: list[str], pretrainings: str, axis: str = "width",
                 name: Callable[[float], str] = _width_name) -> list[str]:
    """The paper's title claim on the size cells: fine-tuned − supervised grows with width (per label subset), and
    at 1 % the fine-tuned spread between the smallest and largest width is at least twice the supervised one.
    ``pretrainings`` names cells whose fine-tuned seeds come from other pretrainings than the size table's; ``axis``
    and ``name`` say what the sizes are (the encoder-depth section's are ResNet depths at one width)."""
    out = []
    for labels in subsets:
        gains = [(w, cells[(w, labels)]["gain"]) for w in widths if cells.get((w, labels), {}).get("gain")]
        if len(gains) > 1:
            means = [statistics.fmean(g) for _, g in gains]
            grows = all(b > a for a, b in zip(means, means[1:], strict=False))
            text = " → ".join(f"{m:+.1f} (n={len(g)})" for m, (_, g) in zip(means, gains, strict=True))
            out.append(f"| fine-tuned − supervised grows with {axis} ({labels}; {axis}s "
                       f"{', '.join(f'{w:g}' for w, _ in gains)}; paired by seed{pretrainings}) | grows | {text} | "
                       f"{_verdict(grows)} |")
    if "1%" in subsets and len(widths) > 1:
        small, large = min(widths), max(widths)

        def spread(method: str) -> float | None:
            a, b = (cells.get((w, "1%"), {}).get(method) for w in (large, small))
            return statistics.fmean(a.values()) - statistics.fmean(b.values()) if a and b else None

        ft, sup = spread("fine-tuned"), spread("supervised")
        if ft is not None and sup is not None:
            # a seed draws the same label subset at every width, so the fine-tuned spread pairs by seed too
            ft_paired = paired(*(cells[(w, "1%")]["fine-tuned"] for w in (large, small)))
            noisy = " (the fine-tuned spread within the seed spread)" if _within_spread(ft_paired) else ""
            out.append(f"| {name(large)} − {name(small)}: fine-tuned spread ≥ 2× supervised spread (1 %"
                       f"{pretrainings}) | ~17 vs ~4 points (ImageNet) | {ft:+.1f} vs {sup:+.1f} (fine-tuned "
                       f"paired by seed: {mean_sd(ft_paired)}) | {_verdict(ft >= 2 * sup and ft > 0)}{noisy} |")
    return out


PRETRAINING_PER_SEED = "; a pretraining per seed"
SK_PAPER = "+6.6 at 1 %, +3.7 at 10 % (ResNet-50, ImageNet)"


def _size_length(rows: list[dict]) -> int | None:
    """The size table's pretraining length in epochs: the pretraining-seeds part also replicates longer ones."""
    return next((r["pretrain_epochs"] for r in rows if r["part"] == "size" and "pretrain_epochs" in r), None)


def _at_length(row: dict, epochs: int | None) -> bool:
    """Whether a run's pretraining was ``epochs`` long (rows recorded before lengths varied were)."""
    return epochs is None or row.get("pretrain_epochs", epochs) == epochs


def pretraining_seed_cells(rows: list[dict], cells: dict) -> dict:
    """The size cells again, with each fine-tuned seed s from a pretraining of seed s (the ``pretraining-seeds``
    part; seed 0's is the size table's own), paired with the same supervised-only runs; only the cells that part
    reached. The spread between these seeds includes the spread between pretrainings, which the size table's
    seeds (one shared pretraining) leave out."""
    length = _size_length(rows)
    replicated = [r for r in rows if r["part"] == "pretraining-seeds" and not r.get("sk_ratio") and not r["memory"]
                  and r["head_layers"] == 3 and r.get("head_layer") == 1 and r.get("test_top1") is not None
                  and _at_length(r, length)]
    out = {}
    for (width, labels), cell in cells.items():
        own = by_seed([r for r in replicated if r["width"] == width and r["labels"] == labels])
        if own and 0 in cell["fine-tuned"]:
            fine_tuned = {0: cell["fine-tuned"][0], **own}
            out[(width, labels)] = {"supervised": cell["supervised"], "fine-tuned": fine_tuned,
                                    "shared": cell["fine-tuned"], "gain": paired(fine_tuned, cell["supervised"])}
    return out


def _sk_pretraining(rows: list[dict], width: float) -> str:
    ratio = next(r["sk_ratio"] for r in rows if r.get("sk_ratio") and r["part"] == "pretraining-seeds")
    return f"pretrain-w{width}-h3-sk{ratio:g}"


def _memory_pretraining(rows: list[dict], width: float) -> str:
    size = next(r["memory"] for r in rows if r.get("memory") and r["part"] == "pretraining-seeds")
    return f"pretrain-w{width}-h3-mem{size}"


def _variant_setting(row: dict) -> tuple[int | None, float | None]:
    """What tells one variant's runs from another's of the same part: memory size and Selective Kernels' ratio."""
    return row.get("memory"), row.get("sk_ratio")


# the pretraining-seeds part's variants of the plain encoder, by the part whose runs are their seed 0: a name, the
# test that picks their rows, and the name of a width's pretraining without its "-s<seed>"
VARIANTS = {"selective-kernels": ("Selective Kernels", lambda r: bool(r.get("sk_ratio")), _sk_pretraining),
            "memory": ("a memory of negatives", lambda r: bool(r.get("memory")) and "memory_momentum" not in r,
                       _memory_pretraining)}


def pretraining_seed_variant_gains(rows: list[dict], replicated: dict, part: str) -> dict[tuple[float, str], dict]:
    """(width, labels) -> a variant's fine-tuned runs (``VARIANTS``), each seed from its own pretraining (seed 0:
    the variant's part), the plain encoder's from a pretraining per seed, and the difference paired by seed,
    where both were replicated."""
    is_variant = VARIANTS[part][1]
    variant = [r for r in rows if is_variant(r) and r["method"] == "fine-tuned" and r.get("test_top1") is not None]
    # seed 0 from the variant's part at the replicated setting (that part may also hold other memory sizes)
    replicated_settings = {_variant_setting(r) for r in variant if r["part"] == "pretraining-seeds"}
    runs = [r for r in variant if r["part"] == "pretraining-seeds"
            or (r["part"] == part and r["seed"] == 0 and _variant_setting(r) in replicated_settings)]
    out = {}
    for (width, labels), cell in replicated.items():
        own = by_seed([r for r in runs if r["width"] == width and r["labels"] == labels])
        if len(own) > 1:
            plain = cell["fine-tuned"]
            out[(width, labels)] = {"variant": own, "plain": plain, "gain": paired(own, plain)}
    return out


def pretraining_seed_table(rows: list[dict], replicated: dict) -> str:
    """Fine-tuned test top-1 from one shared pretraining (the size table) and from a pretraining per seed, each
    paired with supervised only, and the kNN of each width's pretrainings; then each variant against the plain
    encoder, both from a pretraining per seed."""
    lines = ["| width | labels | supervised | fine-tuned, one pretraining | fine-tuned, a pretraining per seed | "
             "fine-tuned − supervised, a pretraining per seed (paired) |", "|---|---|---|---|---|---|"]
    knn = []
    for width in sorted({w for w, _ in replicated}):
        knn.append(f"width {width:g}: " + _knn_by_seed(rows, f"pretrain-w{width}-h3"))
    for (width, labels), cell in replicated.items():
        lines.append(f"| {width:g} | {labels} | {mean_sd(list(cell['supervised'].values()))} | "
                     f"{mean_sd(list(cell['shared'].values()))} | {mean_sd(list(cell['fine-tuned'].values()))} | "
                     f"{mean_sd(cell['gain'])} |")
    text = "kNN top-1 on validation after each pretraining: " + "; ".join(knn) + ".\n\n" + "\n".join(lines)
    for part, (name, _, prefix) in VARIANTS.items():
        gains = pretraining_seed_variant_gains(rows, replicated, part)
        if not gains:
            continue
        knn = [f"width {w:g}: " + _knn_by_seed(rows, prefix(rows, w)) for w in sorted({w for w, _ in gains})]
        title = name[0].upper() + name[1:]
        lines = [f"| width | labels | {title}, fine-tuned | plain, fine-tuned | {title} − plain (paired) |",
                 "|---|---|---|---|---|"]
        lines += [f"| {width:g} | {labels} | {mean_sd(list(cell['variant'].values()))} | "
                  f"{mean_sd(list(cell['plain'].values()))} | {mean_sd(cell['gain'])} |"
                  for (width, labels), cell in gains.items()]
        text += (f"\n\n{title}, a pretraining per seed (kNN top-1 after each: " + "; ".join(knn) + "):\n\n"
                 + "\n".join(lines))
    return text


def pretraining_length_cells(rows: list[dict], cells: dict, per_seed: bool = False) -> dict[int, dict]:
    """Pretraining epochs -> the size cells again with every fine-tuned run from a pretraining that long (the
    ``pretrain-epochs`` part: seed 0's pretraining, the recipes chosen at the size table's length), paired with
    the same supervised-only runs; ``shorter`` holds the size table's fine-tuned runs of the same seeds. With
    ``per_seed``, ``cells`` are :func:`pretraining_seed_cells` and seed s comes from a longer pretraining of seed s
    (the pretraining-seeds part's; seed 0's is the pretrain-epochs part's): only cells with more than that seed."""
    length = _size_length(rows)
    longer = [r for r in rows if r["method"] == "fine-tuned" and r.get("test_top1") is not None
              and not r.get("sk_ratio") and not r["memory"] and r["head_layers"] == 3 and r.get("head_layer") == 1
              and (r["part"] == "pretrain-epochs" and (not per_seed or r["seed"] == 0)
                   or per_seed and r["part"] == "pretraining-seeds" and not _at_length(r, length))]
    out: dict[int, dict] = {}
    for epochs in sorted({r["pretrain_epochs"] for r in longer}):
        for (width, labels), cell in cells.items():
            tuned = by_seed([r for r in longer if r["pretrain_epochs"] == epochs and r["width"] == width
                             and r["labels"] == labels])
            if len(tuned) > per_seed:
                shorter = {seed: value for seed, value in cell["fine-tuned"].items() if seed in tuned}
                out.setdefault(epochs, {})[(width, labels)] = {
                    "supervised": cell["supervised"], "fine-tuned": tuned, "shorter": shorter,
                    "gain": paired(tuned, cell["supervised"])}
    return out


def pretraining_length_table(rows: list[dict], by_length: dict[int, dict], per_seed: bool = False) -> str:
    """Fine-tuned test top-1 from each width's longer pretraining against its size-table pretraining, with the kNN
    of both and the gain over supervised only, all paired by seed; with ``per_seed``, every seed from pretrainings
    of its own (each pretraining's kNN above the table, by seed, and each length's mean over the seeds in it)."""
    base = _size_length(rows)
    lines = [f"| width | labels | epochs | kNN, {base} epochs / longer | fine-tuned, {base} epochs | fine-tuned, "
             f"longer | longer − {base} epochs (paired) | fine-tuned − supervised, longer (paired) |",
             "|---|---|---|---|---|---|---|---|"]
    knn = []
    for epochs, cells in by_length.items():
        for width in sorted({w for w, _ in cells}) if per_seed else []:
            knn.append(f"width {width:g}: {base} epochs " + _knn_by_seed(rows, f"pretrain-w{width}-h3")
                       + f"; {epochs} epochs " + _knn_by_seed(rows, f"pretrain-w{width}-h3-e{epochs}"))
        for (width, labels), cell in cells.items():
            if per_seed:  # the mean over the cell's seeds for each length
                knn_pair = " / ".join(
                    mean_sd([v for seed, v in _knn_values(rows, prefix).items() if seed in cell["fine-tuned"]])
                    for prefix in (f"pretrain-w{width}-h3", f"pretrain-w{width}-h3-e{epochs}"))
            else:
                knn_pair = _knn_pair(rows, f"pretrain-w{width}-h3-s0", f"pretrain-w{width}-h3-e{epochs}-s0")
            lines.append(f"| {width:g} | {labels} | {epochs} | {knn_pair} | {mean_sd(list(cell['shorter'].values()))} "
                         f"| {mean_sd(list(cell['fine-tuned'].values()))} | "
                         f"{mean_sd(paired(cell['fine-tuned'], cell['shorter']))} | {mean_sd(cell['gain'])} |")
    table = "\n".join(lines)
    return ("kNN top-1 on validation after each pretraining: " + "; ".join(knn) + ".\n\n" + table) if knn else table


def _knn_values(rows: list[dict], prefix: str) -> dict[int, float]:
    """Seed -> the kNN top-1 of the pretraining named ``prefix``-s<seed> (other parts' pretrainings of a width name
    what they change, so they do not match)."""
    return dict(sorted((r["seed"], r["knn_val"]) for r in rows
                       if r["method"] == "pretraining" and r["run"] == f"{prefix}-s{r['seed']}"))


def _knn_by_seed(rows: list[dict], prefix: str) -> str:
    return ", ".join(f"{_one_decimal(v)} (seed {s})" for s, v in _knn_values(rows, prefix).items())


def _self_distillation_claims(cells: dict, widths: list[float], subsets: list[str]) -> list[str]:
    """Per label subset, the self-distilled student against its own fine-tuned teacher (``self_distillation_gain``)
    at every width that has both: the claim holds where the mean gain is positive at each of them."""
    out = []
    for labels in subsets:
        gains = [(w, cells[(w, labels)]["distill_gain"]) for w in widths if cells[(w, labels)]["distill_gain"]]
        if gains:
            out.append(_every_width_claim(f"self-distilled − its own fine-tuned teacher ({labels}) > 0 at every width",
                                          "+1.7 at 1 %, +0.8 at 10 % (R152-3×-SK, ImageNet)", gains))
    return out


def _every_width_claim(claim_text: str, paper: str, gains: list[tuple[float, list[float]]]) -> str:
    """A claim row whose paired gain must be positive at every width listed, saying so where a width's mean lies
    within one sd of zero."""
    text = ", ".join(f"width {w:g}: {mean_sd(g)}" for w, g in gains)
    holds = all(statistics.fmean(g) > 0 for _, g in gains)
    noisy = any(_within_spread(g) for _, g in gains)
    verdict = _verdict(holds) + (" (within the seed spread at a width)" if noisy else "")
    return f"| {claim_text} | {paper} | {text} | {verdict} |"


def _best_pipeline_claim(rows: list[dict], cells: dict, widths: list[float]) -> list[str]:
    """The best pretrained path (fine-tuned, self-distilled or big-to-small, any width) against the best
    supervised-only network (any width), by mean at 10 per class, paired on the seeds both have: a seed draws
    the same label subset at every width."""
    def mean(seeds: dict[int, float]) -> float:
        return statistics.fmean(seeds.values())

    pretrained = [(f"{m}, width {w:g}", cells[(w, "10/class")][m]) for w in widths
                  for m in ("fine-tuned", "distilled") if cells[(w, "10/class")][m]]
    small = by_seed(rows, method="big-to-small", width=0.25, labels="10/class")
    pretrained += [("big-to-small, width 0.25", small)] if small else []
    supervised = [(f"width {w:g}", cells[(w, "10/class")]["supervised"]) for w in widths
                  if cells[(w, "10/class")]["supervised"]]
    if not pretrained or not supervised:
        return []
    best, sup = max(pretrained, key=lambda p: mean(p[1])), max(supervised, key=lambda p: mean(p[1]))
    gain = paired(best[1], sup[1])
    return [f"| best pipeline − best supervised (10 per class) ≥ +10 | – | {best[0]} − supervised {sup[0]}: "
            f"{mean_sd(gain)} | {_verdict(bool(gain) and statistics.fmean(gain) >= 10)} |"]


def plot(cells: dict, widths: list[float], subsets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    params = [encoder_params(w) for w in widths]
    for labels in subsets:
        for method, style in (("supervised", "--"), ("fine-tuned", "-")):
            points = [(p, list(cells[(w, labels)][method].values())) for p, w in zip(params, widths, strict=True)
                      if cells[(w, labels)][method]]
            if points:
                x = [p for p, _ in points]
                mean = [statistics.fmean(v) for _, v in points]
                sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
                ax.errorbar(x, mean, yerr=sd, linestyle=style, marker="o", capsize=3, label=f"{method}, {labels}")
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters (M), CIFAR-stem ResNet-18 at widths " + ", ".join(f"{w:g}" for w in widths))
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pretraining_sections(rows: list[dict], cells: dict) -> list[str]:
    """The report's sections on the pretraining itself: a pretraining per seed, and a longer one (shared by the
    seeds, then per seed)."""
    parts = []
    replicated = pretraining_seed_cells(rows, cells)
    if replicated:
        parts += ["", "A pretraining per seed (seed s fine-tuned from a pretraining of seed s; the same "
                  "supervised-only runs and recipes):", "", pretraining_seed_table(rows, replicated)]
    by_length = pretraining_length_cells(rows, cells)
    if by_length:
        parts += ["", "A longer pretraining (seed 0's, fine-tuned with the recipes chosen at the table's length; "
                  "the same supervised-only runs):", "", pretraining_length_table(rows, by_length)]
    by_length = pretraining_length_cells(rows, replicated, per_seed=True)
    if by_length:
        parts += ["", "A longer pretraining per seed (seed s fine-tuned from a longer pretraining of seed s, against "
                  "the pretraining per seed of the table's length; the same recipes and supervised-only runs):", "",
                  pretraining_length_table(rows, by_length, per_seed=True)]
    return parts


def report(rows: list[dict]) -> tuple[str, dict, list[float], list[str]]:
    demo = load_config("demo")  # the study's base config: what a row without a setting's fact ran
    every_row, rows = rows, [r for r in rows if not r.get("depth")]  # deeper encoders: their own section
    size_rows = [r for r in rows if r["part"] in ("size", "recipe")]
    widths = sorted({r["width"] for r in size_rows})
    subsets = [s for s in ("10/class", "1%", "10%") if any(r.get("labels") == s for r in size_rows)]
    table, cells = size_table(rows, widths, subsets)
    by_depth = depth_cells(every_row, cells, subsets, demo.model.depth)
    by_depth_per_seed = depth_seed_cells(every_row, by_depth, pretraining_seed_cells(rows, cells), demo.model.depth,
                                         _size_length(rows))
    claims = (claim(rows, cells, widths, subsets) + _depth_claims(by_depth, subsets)
              + _depth_claims(by_depth_per_seed, subsets, PRETRAINING_PER_SEED))
    parts = ["Test top-1 (%), mean ± sd over seeds; each cell's seeds share one pretraining and differ in label "
             "subset, initialisation and augmentation. Differences are paired by seed.", "", table, ""]
    if claims:
        parts += ["| claim | paper | ours | verdict |", "|---|---|---|---|", *claims, ""]
    parts += ["Recipes chosen on validation (1 % labels, seed 0), the same number of candidates per stage:", "",
              recipe_table(rows), "", pretrain_table(every_row)]
    if any(r["part"] == "distill-recipe" for r in rows):
        parts += ["", "Self-distillation recipes (1 % labels, seed 0), on validation:", "", distill_recipe_table(rows)]
    lengths = distill_length_table(rows, cells)
    if lengths:
        parts += ["", "Self-distillation's length (epochs over all training images):", "", lengths]
    with_labels = distill_labels_table(rows, subsets)
    if with_labels:
        parts += ["", "Self-distillation with the labelled term too (it weighs 1 − α, on the teacher's own labelled "
                  "subset):", "", with_labels]
    if any(r["part"] == "head" for r in rows):
        parts += ["", "Head depth (fine-tuning from each layer; in bold the layer chosen on validation, by the mean "
                  "over seeds):", "", head_table(head_rows(rows), subsets)]
    per_seed_head = head_rows(rows, per_seed=True)
    if per_seed_head:
        width = per_seed_head[0]["width"]
        knn = [f"{h} layers: " + _knn_by_seed(rows, f"pretrain-w{width}-h{h}")
               for h in sorted({r["head_layers"] for r in per_seed_head})]
        parts += ["", "Head depth, a pretraining per seed (seed s fine-tuned from every layer of a pretraining of "
                  "seed s; in bold the layer chosen on validation; kNN top-1 after each pretraining: "
                  + "; ".join(knn) + "):", "", head_table(per_seed_head, subsets)]
    if any(r["part"] == "memory" for r in rows):
        parts += ["", "A memory of negatives in pretraining (width 0.25):", "",
                  memory_table(rows, cells, subsets, demo.pretrain.memory_momentum)]
    selective_kernels = selective_kernels_table(rows, cells, subsets)
    if selective_kernels:
        parts += ["", "Selective Kernels in the encoder (the plain encoder's recipes, one pretraining each):",
                  "", selective_kernels]
    parts += _pretraining_sections(rows, cells)
    if by_depth:
        parts += ["", f"Encoder depth (each deeper ResNet with its own recipes, chosen on validation; ResNet-"
                  f"{demo.model.depth} is the table's; one pretraining per encoder):", "",
                  depth_table(by_depth, subsets, demo.model.depth), "", depth_recipe_table(every_row)]
    if by_depth_per_seed:
        parts += ["", "Encoder depth, a pretraining per seed (seed s fine-tuned from a pretraining of seed s at every "
                  "depth; the same recipes and supervised-only runs):", "",
                  depth_table(by_depth_per_seed, subsets, demo.model.depth)]
    temperatures, best = temperature_table(rows, demo.pretrain.temperature)
    if temperatures:
        parts += ["", "Pretraining temperature, fine-tuned with the recipe chosen at the demo's τ (chosen on "
                  f"validation: τ {best:g}):", "", temperatures]
    return "\n".join(parts), cells, widths, subsets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", action="store_true", help="also write the README's block")
    args = parser.parse_args(argv)
    rows = read_rows(args.results)
    text, cells, widths, subsets = report(rows)
    out = args.results.with_suffix("")
    Path(f"{out}.md").write_text(f"# Scale study\n\n`{COMMAND}`\n\n{text}\n")
    plot(cells, widths, subsets, Path(f"{out}.png"))
    if args.readme:
        figure = Path(f"{out}.png").resolve().relative_to(ROOT)
        write_readme("scale-study", COMMAND, f"{text}\n\n![accuracy against network size]({figure})")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
