"""Variants of the size table's network, each against the plain network of the same width with the same recipes, so
that only the variant differs: a memory of negatives in pretraining, Selective Kernels in the encoder, and the
pretraining temperature."""

from __future__ import annotations

import statistics

from scale_pretraining import _knn_of, _knn_pair, _one_decimal
from scale_stats import by_seed, encoder_params, mean_sd, paired


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
