"""The scale study's report on results rows written by hand: the claims' numbers and verdicts, and which rows each
table pairs (tests/test_scale_study.py and tests/test_scale_pretraining.py make rows with fake stages)."""

from __future__ import annotations

import random

from benchmark_scripts import load_benchmark

scale_claims = load_benchmark("scale_claims")
scale_distill = load_benchmark("scale_distill")
scale_head = load_benchmark("scale_head")
scale_pretraining = load_benchmark("scale_pretraining")
scale_report = load_benchmark("scale_report")
scale_size = load_benchmark("scale_size")
scale_stats = load_benchmark("scale_stats")
scale_variants = load_benchmark("scale_variants")


def _cell(sup: dict, ft: dict, kd: dict | None = None) -> dict:
    return {"supervised": sup, "fine-tuned": ft, "distilled": kd or {},
            "gain": scale_stats.paired(ft, sup), "distill_gain": scale_stats.paired(kd or {}, ft)}


def test_each_claim_of_the_issue_gets_its_numbers_and_verdict():
    cells = {(0.25, "1%"): _cell({0: 80, 1: 81}, {0: 80.5, 1: 81.5}),
             (1.0, "1%"): _cell({0: 82, 1: 83}, {0: 85, 1: 86}),
             (0.25, "10/class"): _cell({0: 65, 1: 66}, {0: 70, 1: 71}, {0: 72, 1: 73}),
             (1.0, "10/class"): _cell({0: 66, 1: 67}, {0: 77, 1: 78})}
    rows = [{"part": "big-to-small", "method": "big-to-small", "width": 0.25, "labels": "1%", "seed": s,
             "test_top1": 83.0 + s} for s in (0, 1)]
    rows += [{"part": "size" if j == 1 else "head", "method": "fine-tuned", "width": 0.25, "recipe": "sgd-0.01",
              "memory": 0, "head_layers": 3, "labels": "10/class", "head_layer": j, "seed": s,
              "test_top1": 70.0 + j - s / 2} for j in (0, 1, 2, 3) for s in (0, 1)]
    claims = scale_claims.claim(rows, cells, [0.25, 1.0], ["10/class", "1%"])
    assert len(claims) == 7
    by_name = {c.split(" | ")[0]: c for c in claims}
    assert by_name["| fine-tuned − supervised grows with width (10/class; widths 0.25, 1; paired by seed)"].endswith(
        "| +5.0 (n=2) → +11.0 (n=2) | holds |")
    assert "| +0.5 (n=2) → +3.0 (n=2) | holds |" in claims[1]
    # 85.5 - 81.0 against 82.5 - 80.5; the fine-tuned spread also paired by seed (same label subset at each width)
    assert claims[2].endswith("| +4.5 vs +2.0 (fine-tuned paired by seed: 4.5 ± 0.0 (n=2)) | holds |")
    assert claims[3].endswith("| 2.5 ± 0.0 (n=2) | holds |")  # 83/84 against 80.5/81.5
    assert claims[4].endswith("fine-tuned, width 1 − supervised width 1: 11.0 ± 0.0 (n=2) | holds |")
    assert claims[5].endswith("| width 0.25: 2.0 ± 0.0 (n=2) | holds |")  # 72/73 against 70/71, its teacher
    assert claims[6].endswith("| 1.0 ± 0.0 (n=2) | holds |")

    cells[(1.0, "1%")] = _cell({0: 82, 1: 83}, {0: 82, 1: 83})  # no gain at width 1: neither trend nor spread
    rows = [dict(r, test_top1=r["test_top1"] - 1) if r["part"] == "big-to-small" else r for r in rows]
    claims = scale_claims.claim(rows, cells, [0.25, 1.0], ["10/class", "1%"])
    assert "| +0.5 (n=2) → +0.0 (n=2) | **does not hold** |" in claims[1]
    assert claims[2].endswith("| +1.5 vs +2.0 (fine-tuned paired by seed: 1.5 ± 0.0 (n=2)) | **does not hold** |")
    assert claims[3].endswith("| 1.5 ± 0.0 (n=2) | **does not hold** |")


def test_self_distillation_holds_only_where_every_width_gains_on_its_own_teacher():
    cells = {(0.25, "1%"): _cell({0: 80, 1: 81}, {0: 80.5, 1: 81.5}, {0: 81.0, 1: 81.5}),
             (1.0, "1%"): _cell({0: 82, 1: 83}, {0: 85, 1: 86}, {1: 85.0, 2: 90.0})}
    claims = scale_claims._self_distillation_claims(cells, [0.25, 1.0], ["1%"])
    # width 1 pairs seed 1 only (seed 2 has no fine-tuned teacher): 85 - 86 = -1
    assert claims == ["| self-distilled − its own fine-tuned teacher (1%) > 0 at every width | +1.7 at 1 %, +0.8 "
                      "at 10 % (R152-3×-SK, ImageNet) | width 0.25: 0.2 ± 0.4 (n=2), width 1: -1.0 ± 0.0 (n=1) | "
                      "**does not hold** (within the seed spread at a width) |"]
    cells[(1.0, "1%")]["distill_gain"] = []  # a width without self-distilled runs is left out, not counted a loss
    assert scale_claims._self_distillation_claims(cells, [0.25, 1.0], ["1%"])[0].endswith(
        "| width 0.25: 0.2 ± 0.4 (n=2) | holds (within the seed spread at a width) |")
    cells[(0.25, "1%")]["distill_gain"] = []
    assert scale_claims._self_distillation_claims(cells, [0.25, 1.0], ["1%"]) == []


def test_self_distillation_lengths_get_their_own_table_and_the_size_table_keeps_the_default():
    def student(seed: int, epochs: int | None, test: float) -> dict:
        row = {"method": "distilled", "part": "distill", "width": 0.25, "labels": "1%", "seed": seed,
               "test_top1": test, "teacher_test_top1": 80.0}
        return row if epochs is None else dict(row, distill_epochs=epochs)

    rows = [student(0, None, 80.5), student(1, 2, 81.0), student(0, 5, 82.0), student(1, 5, 81.0)]
    assert [r["test_top1"] for r in scale_distill.self_distilled(rows, 0.25, "1%")] == [80.5, 81.0]
    cells = {(0.25, "1%"): _cell({0: 79.0, 1: 79.0}, {0: 80.0, 1: 80.0})}
    assert scale_distill.distill_length_table(rows, cells).splitlines()[2:] == [
        "| 0.25 | 1% | 2 | 80.8 ± 0.4 (n=2) | 0.8 ± 0.4 (n=2) |",
        "| 0.25 | 1% | 5 | 81.5 ± 0.7 (n=2) | 1.5 ± 0.7 (n=2) |"]
    assert scale_distill.distill_length_table(rows[:2], cells) == ""  # one length: the size table says it all


def test_head_depth_compares_each_head_from_the_layer_validation_chose_not_test():
    """Validation prefers the 2-layer head's layer 2, test its layer 1: the table bolds layer 2 and the claim pairs
    the 3-layer head's chosen layer with it, seed by seed."""
    def run(heads: int, layer: int, seed: int, val: float, test: float) -> dict:
        return {"part": "size" if (heads, layer) == (3, 1) else "head", "method": "fine-tuned", "width": 0.25,
                "recipe": "sgd-0.01", "memory": 0, "head_layers": heads, "labels": "1%", "head_layer": layer,
                "seed": seed, "val_top1": val, "test_top1": test}

    rows = [run(2, 0, s, 70.0, 70.0) for s in (0, 1)] + [run(2, 1, s, 71.0, 79.0) for s in (0, 1)]
    rows += [run(2, 2, 0, 72.0, 75.0), run(2, 2, 1, 71.5, 77.0)]
    rows += [run(3, j, s, 75.0 + (j == 1), 76.0 + s) for j in range(4) for s in (0, 1)]
    assert scale_head.chosen_head_layers(scale_head.head_rows(rows)) == {(2, "1%"): 2, (3, "1%"): 1}
    table = scale_head.head_table(scale_head.head_rows(rows), ["1%"]).splitlines()
    assert table[2:5] == ["| 2 | 0 | 70.0 ± 0.0 (n=2) |", "| 2 | 1 | 79.0 ± 0.0 (n=2) |",
                          "| 2 | 2 | **76.0 ± 1.4 (n=2)** |"]
    assert table[6] == "| 3 | 1 | **76.5 ± 0.7 (n=2)** |"
    # 3-layer from layer 1 (76, 77) − 2-layer from layer 2 (75, 77), paired by seed: +1, 0
    assert scale_claims._head_claims(scale_head.head_rows(rows), ["1%", "10/class"], "") == [
        "| 3-layer head − 2-layer head, each from its layer chosen on validation (1%) ≥ 0 | deeper is better, most "
        "so with few labels (ImageNet) | layer 1 − layer 2: 0.5 ± 0.7 (n=2) | holds (within the seed spread) |"]
    assert scale_stats._paired_verdict([1.0, 2.0], True) == "holds"
    assert scale_stats._paired_verdict([-1.0, 0.5], False) == "**does not hold** (within the seed spread)"


def test_selective_kernels_hold_only_where_every_width_gains():
    def run(width: float, seed: int, test: float) -> dict:
        return {"part": "selective-kernels", "method": "fine-tuned", "width": width, "labels": "1%", "seed": seed,
                "test_top1": test, "sk_ratio": 0.0625}

    cells = {(0.25, "1%"): _cell({}, {0: 80.0, 1: 81.0}), (0.5, "1%"): _cell({}, {0: 82.0, 1: 82.0})}
    rows = [run(0.25, 0, 81.0), run(0.25, 1, 82.0), run(0.5, 0, 81.0), run(0.5, 1, 82.5)]
    # width 0.5: -1 and +0.5, a mean below zero within its spread
    assert scale_claims._selective_kernels_claims(rows, cells, ["1%"]) == [
        "| Selective Kernels − plain encoder, fine-tuned (1%) > 0 at every width | +6.6 at 1 %, +3.7 at 10 % "
        "(ResNet-50, ImageNet) | width 0.25: 1.0 ± 0.0 (n=2), width 0.5: -0.2 ± 1.1 (n=2) | **does not hold** "
        "(within the seed spread at a width) |"]
    assert scale_claims._selective_kernels_claims(rows[:2], cells, ["1%"])[0].endswith(
        "| width 0.25: 1.0 ± 0.0 (n=2) | holds |")


def test_a_pretraining_per_seed_is_reported_beside_the_shared_one_and_stays_out_of_the_size_table():
    common = {"method": "fine-tuned", "labels": "1%", "head_layers": 3, "memory": 0, "head_layer": 1,
              "recipe": "sgd-0.01"}
    rows = [{"part": "size", "run": f"ft-w{w}-s{s}", "width": w, "seed": s, "test_top1": top1, "val_top1": 0, **common}
            for w, tops in ((0.25, (81, 82, 83)), (1.0, (82, 83, 84))) for s, top1 in enumerate(tops)]
    rows += [{"part": "size", "run": f"sup-w{w}-s{s}", "width": w, "seed": s, "test_top1": top1, "val_top1": 0,
              **dict(common, method="supervised", recipe="sgd-0.3")}
             for w, tops in ((0.25, (80, 81, 82)), (1.0, (78, 79, 80))) for s, top1 in enumerate(tops)]
    # seeds 1 and 2 from their own pretrainings: worse at width 0.25, better at width 1
    rows += [{"part": "pretraining-seeds", "run": f"ft-w{w}-pre{s}-s{s}", "width": w, "seed": s, "pretrain_seed": s,
              "test_top1": top1, **common} for w, tops in ((0.25, (80, 81)), (1.0, (85, 86)))
             for s, top1 in zip((1, 2), tops, strict=True)]
    rows += [{"part": "", "run": f"pretrain-w{w}-h3-s{s}", "method": "pretraining", "width": w, "seed": s,
              "head_layers": 3, "memory": 0, "knn_val": 75.0 + s} for w in (0.25, 1.0) for s in (0, 1, 2)]
    rows.append({"part": "", "run": "pretrain-w0.25-h4-s0", "method": "pretraining", "width": 0.25, "seed": 0,
                 "head_layers": 4, "memory": 0, "knn_val": 10.0})
    rows += [{"part": "choice", "method": "choice", "stage": stage, "width": w, "head_layers": 3, "memory": 0,
              "recipe": recipe} for w in (0.25, 1.0) for stage, recipe in (("finetune", "sgd-0.01"),
                                                                           ("supervised", "sgd-0.3"))]
    _, cells = scale_size.size_table(rows, [0.25, 1.0], ["1%"])
    assert cells[(0.25, "1%")]["fine-tuned"] == {0: 81, 1: 82, 2: 83}  # the shared pretraining's runs only
    replicated = scale_pretraining.pretraining_seed_cells(rows, cells)
    assert replicated[(0.25, "1%")]["fine-tuned"] == {0: 81, 1: 80, 2: 81}
    assert replicated[(1.0, "1%")]["gain"] == [4, 6, 6]
    claims = scale_claims.claim(rows, cells, [0.25, 1.0], ["1%"])
    assert ("| fine-tuned − supervised grows with width (1%; widths 0.25, 1; paired by seed; a pretraining per "
            "seed) | grows | -0.3 (n=3) → +5.3 (n=3) | holds |") in claims
    # 84.3 - 80.7 against 79 - 81; the shared pretraining's own spread row stays as it was (+1.0 vs -2.0)
    assert any(c.endswith("(1 %; a pretraining per seed) | ~17 vs ~4 points (ImageNet) | +3.7 vs -2.0 (fine-tuned "
                          "paired by seed: 3.7 ± 2.3 (n=3)) | holds |") for c in claims)
    assert any(c.endswith("(1 %) | ~17 vs ~4 points (ImageNet) | +1.0 vs -2.0 (fine-tuned paired by seed: 1.0 ± 0.0 "
                          "(n=3)) | holds |") for c in claims)
    table = scale_pretraining.pretraining_seed_table(rows, replicated)
    assert "width 0.25: 75.0 (seed 0), 76.0 (seed 1), 77.0 (seed 2)" in table  # not the 4-layer head's pretraining
    assert "| 1 | 1% | 79.0 ± 1.0 (n=3) | 83.0 ± 1.0 (n=3) | 84.3 ± 2.1 (n=3) | 5.3 ± 1.2 (n=3) |" in table
    # width 1's seed 1 pretraining worse: widths 1 − 0.25 fine-tuned by seed 1, -1, 5, a mean within one sd of zero
    rows = [dict(r, test_top1=79) if r.get("run") == "ft-w1.0-pre1-s1" else r for r in rows]
    claims = scale_claims.claim(rows, cells, [0.25, 1.0], ["1%"])
    assert any(c.endswith("| +1.7 vs -2.0 (fine-tuned paired by seed: 1.7 ± 3.1 (n=3)) | holds (the fine-tuned "
                          "spread within the seed spread) |") for c in claims)


def test_selective_kernels_per_pretraining_seed_are_paired_with_the_plain_encoders_per_seed():
    common = {"method": "fine-tuned", "labels": "1%", "width": 0.25, "head_layers": 3, "memory": 0}
    rows = [{"part": "selective-kernels", "run": "sk-s0", "seed": 0, "sk_ratio": 0.0625, "test_top1": 82.0, **common},
            {"part": "selective-kernels", "run": "sk-s1", "seed": 1, "sk_ratio": 0.0625, "test_top1": 99.0, **common}]
    rows += [{"part": "pretraining-seeds", "run": f"sk-pre{s}-s{s}", "seed": s, "pretrain_seed": s, "sk_ratio": 0.0625,
              "test_top1": top1, **common} for s, top1 in ((1, 80.0), (2, 81.0))]
    rows += [{"part": "", "run": f"pretrain-w0.25-h3-sk0.0625-s{s}", "method": "pretraining", "width": 0.25,
              "seed": s, "head_layers": 3, "memory": 0, "sk_ratio": 0.0625, "knn_val": 77.0 + s} for s in (0, 1)]
    replicated = {(0.25, "1%"): {"supervised": {0: 80, 1: 81, 2: 82}, "shared": {0: 81, 1: 82, 2: 83},
                                 "fine-tuned": {0: 81, 1: 82, 2: 80}, "gain": [1, 1, -2]}}
    sk = scale_pretraining.pretraining_seed_variant_gains(rows, replicated, "selective-kernels")
    # seed 1 from its own pretraining (80), not the shared pretraining's seed-1 run (99)
    assert sk[(0.25, "1%")]["variant"] == {0: 82.0, 1: 80.0, 2: 81.0}
    assert scale_pretraining.pretraining_seed_variant_gains(rows, replicated, "memory") == {}
    assert sk[(0.25, "1%")]["gain"] == [1.0, -2.0, 1.0]
    table = scale_pretraining.pretraining_seed_table(rows, replicated)
    assert "(kNN top-1 after each: width 0.25: 77.0 (seed 0), 78.0 (seed 1))" in table
    assert "| 0.25 | 1% | 81.0 ± 1.0 (n=3) | 81.0 ± 1.0 (n=3) | 0.0 ± 1.7 (n=3) |" in table


def test_head_claims_with_a_pretraining_per_seed_pair_each_seed_with_its_own_pretrainings():
    """Seed 1 from the shared pretraining favours layer 1, from its own pretraining layer 0: the per-seed claims
    use the own-pretraining runs (seed 0 the head part's), the shared claims the shared runs."""
    def run(part: str, heads: int, layer: int, seed: int, test: float, **extra) -> dict:
        return {"part": part, "method": "fine-tuned", "width": 0.25, "recipe": "sgd-0.01", "memory": 0,
                "head_layers": heads, "labels": "10/class", "head_layer": layer, "seed": seed, "val_top1": 70.0,
                "test_top1": test, **extra}

    rows = [run("size" if j == 1 else "head", 3, j, s, 70.0 + 2 * (j == 1)) for j in range(4) for s in (0, 1)]
    assert scale_head.head_rows(rows, per_seed=True) == []  # no pretraining-seeds runs at all
    # the size claims' own runs (3-layer head, layer 1) alone are no head replication
    rows.append(run("pretraining-seeds", 3, 1, 1, 60.0, pretrain_seed=1))
    assert scale_head.head_rows(rows, per_seed=True) == []
    rows += [run("pretraining-seeds", 3, j, 1, 65.0, pretrain_seed=1) for j in (0, 2, 3)]
    shared = scale_claims._head_claims(scale_head.head_rows(rows), ["10/class"], "")
    assert shared[0].startswith("| fine-tuning from head layer 1 − layer 0, 3-layer head (10 per class) ≥ 0 |")
    assert "| 2.0 ± 0.0 (n=2) | holds |" in shared[0]
    per_seed = scale_claims._head_claims(scale_head.head_rows(rows, per_seed=True), ["10/class"],
                                         scale_pretraining.PRETRAINING_PER_SEED)
    # seed 0: 72 − 70 (head part); seed 1: 60 − 65 (its own pretraining)
    assert per_seed[0].startswith("| fine-tuning from head layer 1 − layer 0, 3-layer head (10 per class; a "
                                  "pretraining per seed) ≥ 0 |")
    assert "| -1.5 ± 4.9 (n=2) | **does not hold** (within the seed spread) |" in per_seed[0]
    text, *_ = scale_report.report(rows)
    assert "Head depth, a pretraining per seed" in text


def test_the_kNN_beside_selective_kernels_and_temperatures_is_that_of_the_named_pretraining_not_a_longer_one():
    pretrainings = {"pretrain-w0.25-h3-s0": 75.0, "pretrain-w0.25-h3-sk0.0625-s0": 77.0,
                    "pretrain-w0.25-h3-t0.1-s0": 74.0, "pretrain-w0.25-h3-e5-s0": 99.0}
    rows = [{"part": "", "run": name, "method": "pretraining", "width": 0.25, "head_layers": 3, "memory": 0, "seed": 0,
             "pretrain_temperature": 0.1 if "-t0.1" in name else 0.2, "pretrain_epochs": 5 if "-e5" in name else 2,
             "knn_val": knn, **({"sk_ratio": 0.0625} if "sk" in name else {})} for name, knn in pretrainings.items()]
    rows.insert(0, rows.pop())  # the longer pretraining first, where a search by facts would find it
    common = {"method": "fine-tuned", "width": 0.25, "labels": "1%", "recipe": "sgd-0.01", "head_layers": 3,
              "memory": 0, "head_layer": 1, "seed": 0, "val_top1": 80.0, "test_top1": 80.0}
    rows += [{"part": "selective-kernels", "run": "sk", "sk_ratio": 0.0625, "pretrain_temperature": 0.2, **common},
             {"part": "size", "run": "plain", "pretrain_temperature": 0.2, **common},
             {"part": "temperature", "run": "t0.1", "pretrain_temperature": 0.1, **common}]
    cells = {(0.25, "1%"): {"fine-tuned": {0: 80.0}, "supervised": {0: 79.0}}}
    table = scale_variants.selective_kernels_table(rows, cells, ["1%"])
    assert "Selective Kernels (kNN 77.0 after pretraining), 0.70 M without (kNN 75.0)." in table
    temperatures, _ = scale_variants.temperature_table(rows, 0.2)
    assert [line.split(" | ")[:2] for line in temperatures.splitlines()[2:]] == [["| 0.1", "74.0"], ["| 0.2", "75.0"]]


def test_the_committed_results_read_the_same_in_any_order():
    """The results file keeps runs in the order they were first recorded, which differs between machines and
    sessions; a per-seed run recorded under the same facts as a shared-pretraining one must not take its place in
    any table by coming later. Only the list of pretrainings follows the file's order."""
    rows = scale_stats.read_rows(scale_report.RESULTS)

    def lines(text: str) -> tuple[list[str], list[str]]:
        listing = [line for line in text.splitlines() if line.startswith("| pretrain-")]
        return [line for line in text.splitlines() if line not in listing], sorted(listing)

    text = scale_report.report(rows)[0]
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    for other in (rows[::-1], shuffled):
        assert lines(scale_report.report(other)[0]) == lines(text)
