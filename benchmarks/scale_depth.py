"""The scale study's encoder-depth section: deeper ResNets at one width, each with the recipes chosen for it on
validation, beside the size table's ResNet-18 of that width (the base config's depth, whose rows carry no
``depth``). The paper grows its networks in depth as well as width (ResNet-50 to 152); this is that axis."""

from __future__ import annotations

from scale_stats import STAGE_METHOD, by_seed, encoder_params, mean_sd, paired


def depth_choices(rows: list[dict]) -> dict[tuple[float, int, str], dict]:
    """(width, depth, method) -> the recorded recipe choice of a deeper encoder."""
    return {(r["width"], r["depth"], STAGE_METHOD[r["stage"]]): r for r in rows
            if r["method"] == "choice" and r.get("depth")}


def depth_cells(rows: list[dict], size_cells: dict, subsets: list[str],
                base_depth: int) -> dict[float, dict[tuple[int, str], dict]]:
    """width -> (depth, labels) -> supervised and fine-tuned test top-1 by seed and their paired difference; the
    base depth's cells are the size table's of that width. Every seed here is fine-tuned from seed 0's pretraining:
    the runs from a pretraining of their own seed (``pretrain_seed``) are depth_seed_cells' and, recorded under the
    same facts otherwise, must not replace them."""
    choices = depth_choices(rows)
    rows = [r for r in rows if not r.get("pretrain_seed")]
    out: dict[float, dict[tuple[int, str], dict]] = {}
    for width, depth, _ in sorted(choices):
        cells = out.setdefault(width, {(base_depth, labels): size_cells[(width, labels)] for labels in subsets
                                       if (width, labels) in size_cells})
        for labels in subsets:
            common = {"width": width, "depth": depth, "labels": labels, "head_layers": 3, "memory": 0,
                      "head_layer": 1}
            cell = {method: by_seed(rows, method=method, recipe=choices[(width, depth, method)]["recipe"], **common)
                    for method in ("supervised", "fine-tuned") if (width, depth, method) in choices}
            if any(cell.values()):
                cells[(depth, labels)] = dict(cell, gain=paired(cell.get("fine-tuned", {}),
                                                                 cell.get("supervised", {})))
    return out


def depths_of(cells: dict[tuple[int, str], dict]) -> list[int]:
    return sorted({depth for depth, _ in cells})


def depth_table(by_width: dict[float, dict[tuple[int, str], dict]], subsets: list[str], base_depth: int) -> str:
    """Test top-1 per depth and subset, fine-tuned − supervised, and each fine-tuned seed against the base depth's
    fine-tuned run of the same seed (the same label subset)."""
    lines = [f"| encoder (params) | labels | supervised | fine-tuned (layer 1) | fine-tuned − supervised (paired) | "
             f"fine-tuned − ResNet-{base_depth} fine-tuned (paired) |", "|---|---|---|---|---|---|"]
    for width, cells in by_width.items():
        for depth in depths_of(cells):
            for labels in subsets:
                cell = cells.get((depth, labels))
                if cell is None:
                    continue
                base = cells.get((base_depth, labels), {}).get("fine-tuned", {})
                deeper = mean_sd(paired(cell.get("fine-tuned", {}), base)) if depth != base_depth else "–"
                lines.append(f"| ResNet-{depth} width {width:g} ({encoder_params(width, depth=depth):.2f} M) | "
                             f"{labels} | {mean_sd(list(cell.get('supervised', {}).values()))} | "
                             f"{mean_sd(list(cell.get('fine-tuned', {}).values()))} | {mean_sd(cell['gain'])} | "
                             f"{deeper} |")
    return "\n".join(lines)


def depth_recipe_table(rows: list[dict]) -> str:
    """Each deeper encoder's candidates with the validation top-1 its choice was made on, the chosen in bold."""
    lines = ["| encoder | stage | candidate | validation top-1 |", "|---|---|---|---|"]
    for (width, depth, method), choice in sorted(depth_choices(rows).items()):
        for recipe, val in sorted(choice["scores"].items()):
            mark = "**" if recipe == choice["recipe"] else ""
            lines.append(f"| ResNet-{depth} width {width:g} | {method} | {mark}{recipe}{mark} | {val:.1f} |")
    return "\n".join(lines)


def depth_seed_cells(rows: list[dict], by_width: dict[float, dict[tuple[int, str], dict]], replicated: dict,
                     base_depth: int, length: int | None) -> dict[float, dict[tuple[int, str], dict]]:
    """The depth cells again with each fine-tuned seed s from a pretraining of seed s (the pretraining-seeds part;
    seed 0's is the encoder-depth part's own), paired with the same supervised-only runs; the base depth's cells
    are the size table's per-seed ones (``replicated``). Only the widths where a deeper encoder has them."""
    choices = depth_choices(rows)
    out = {}
    for width, cells in by_width.items():
        per_seed = {(depth, labels): replicated[(width, labels)] for depth, labels in cells
                    if depth == base_depth and (width, labels) in replicated}
        for (depth, labels), cell in cells.items():
            if depth == base_depth or (width, depth, "fine-tuned") not in choices:
                continue
            own = by_seed(rows, part="pretraining-seeds", method="fine-tuned", width=width, depth=depth,
                          labels=labels, head_layer=1, recipe=choices[(width, depth, "fine-tuned")]["recipe"],
                          pretrain_epochs=length)
            if own and 0 in cell.get("fine-tuned", {}):
                fine_tuned = {0: cell["fine-tuned"][0], **own}
                supervised = cell.get("supervised", {})
                per_seed[(depth, labels)] = {"supervised": supervised, "fine-tuned": fine_tuned,
                                             "gain": paired(fine_tuned, supervised)}
        if any(depth != base_depth for depth, _ in per_seed):
            out[width] = per_seed
    return out
