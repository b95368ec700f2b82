"""The pretraining itself in the scale study's report: a pretraining per seed (the size table's seeds share one, so
their spread leaves out the spread between pretrainings) and a longer pretraining; and the look-ups of a pretraining
run that every section makes, by the name scale_study gives it (its kNN) and by its length."""

from __future__ import annotations

from scale_stats import by_seed, mean_sd, paired

PRETRAINING_PER_SEED = "; a pretraining per seed"


def _size_length(rows: list[dict]) -> int | None:
    """The size table's pretraining length in epochs: the pretraining-seeds part also replicates longer ones."""
    return next((r["pretrain_epochs"] for r in rows if r["part"] == "size" and "pretrain_epochs" in r), None)


def _at_length(row: dict, epochs: int | None) -> bool:
    """Whether a run's pretraining was ``epochs`` long (rows recorded before lengths varied were)."""
    return epochs is None or row.get("pretrain_epochs", epochs) == epochs


def _knn_of(rows: list[dict], pretraining: str) -> float | None:
    """The validation kNN of the pretraining run named ``pretraining`` (as scale_study names it), if recorded."""
    return next((r.get("knn_val") for r in rows if r["run"] == pretraining), None)


def _knn_pair(rows: list[dict], first: str, second: str) -> str:
    """"a / b": the kNN of two named pretrainings, side by side in one table cell."""
    return f"{_one_decimal(_knn_of(rows, first))} / {_one_decimal(_knn_of(rows, second))}"


def _one_decimal(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _knn_values(rows: list[dict], prefix: str) -> dict[int, float]:
    """Seed -> the kNN top-1 of the pretraining named ``prefix``-s<seed> (other parts' pretrainings of a width name
    what they change, so they do not match)."""
    return dict(sorted((r["seed"], r["knn_val"]) for r in rows
                       if r["method"] == "pretraining" and r["run"] == f"{prefix}-s{r['seed']}"))


def _knn_by_seed(rows: list[dict], prefix: str) -> str:
    return ", ".join(f"{_one_decimal(v)} (seed {s})" for s, v in _knn_values(rows, prefix).items())


def pretrain_table(rows: list[dict]) -> str:
    # no wall time here: a resumed run's covers only its last part, and the cores were shared
    lines = ["| pretraining run | epochs | validation kNN top-1 |", "|---|---|---|"]
    for r in rows:
        if r["method"] == "pretraining":
            lines.append(f"| {r['run']} | {r['pretrain_epochs']} | {_one_decimal(r.get('knn_val'))} |")
    return "\n".join(lines)


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
