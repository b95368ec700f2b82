"""The projection head's depth in the scale study: fine-tuning from every layer of each head depth, the layer chosen
on validation like any other setting (the paper fine-tunes from the middle of a deeper head, most usefully with few
labels)."""

from __future__ import annotations

import statistics

from scale_pretraining import _at_length, _size_length
from scale_stats import by_seed, mean_sd


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
