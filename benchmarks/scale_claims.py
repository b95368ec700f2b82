"""The scale report's claims table: each of the paper's claims that the finished runs can answer, with the paper's
number, ours (paired by seed) and a verdict. The rows are made here from every section's cells, so that the claims
read as one table and a verdict is worded the same way wherever it is given."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from scale_depth import depths_of
from scale_head import chosen_head_layers, head_rows
from scale_pretraining import (
    PRETRAINING_PER_SEED,
    pretraining_length_cells,
    pretraining_seed_cells,
    pretraining_seed_variant_gains,
)
from scale_stats import _paired_verdict, _verdict, _within_spread, by_seed, mean_sd, paired

SK_PAPER = "+6.6 at 1 %, +3.7 at 10 % (ResNet-50, ImageNet)"


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
