"""The scale study's size table, the paper's title axis: each width's supervised and fine-tuning recipes chosen on
validation from grids of the same size (so neither method is tuned harder), then test top-1 per width and label
subset with fine-tuned − supervised paired by seed; and the plot of those cells."""

from __future__ import annotations

import statistics
from pathlib import Path

from scale_distill import self_distillation_gain, self_distilled
from scale_stats import STAGE_METHOD, by_seed, encoder_params, mean_sd, paired


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
