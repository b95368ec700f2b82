"""The scale study's parts on the pretraining itself, with fake stages (tests/scale_study_helpers.py): a
pretraining per seed, of the plain encoder and of its variants, and a longer pretraining; which runs each makes
from which pretraining, and that the report pairs each seed with its own pretrainings while the size table
keeps the shared one's runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark
from scale_study_helpers import fake_stages, study

scale_claims = load_benchmark("scale_claims")
scale_head = load_benchmark("scale_head")
scale_pretraining = load_benchmark("scale_pretraining")
scale_report = load_benchmark("scale_report")
scale_size = load_benchmark("scale_size")
scale_stats = load_benchmark("scale_stats")
scale_variants = load_benchmark("scale_variants")


@pytest.fixture
def fake(monkeypatch):
    return fake_stages(monkeypatch)


def test_pretraining_seeds_fine_tune_each_seed_from_its_own_pretraining(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "pretraining-seeds")
    pretrainings = [name for stage, name in fake.calls if stage == "pretrain"]
    assert sorted(pretrainings) == ["pretrain-w0.25-h3-s0", "pretrain-w0.25-h3-s1",
                                    "pretrain-w0.5-h3-s0", "pretrain-w0.5-h3-s1"]
    assert fake.configs["pretrain-w0.5-h3-s1"].run.seed == 1
    replicated = [r for r in rows if r["part"] == "pretraining-seeds"]
    # seed 0's pretraining is the size part's, so only seed 1 adds fine-tuned runs: 2 widths x 2 subsets
    assert len(replicated) == 4
    for r in replicated:
        config = fake.configs[r["run"]]
        assert (r["seed"], r["pretrain_seed"], r["method"], r["recipe"]) == (1, 1, "fine-tuned", "sgd-0.01")
        assert config.run.seed == 1
        assert Path(config.finetune.pretrained).name == f"pretrain-w{r['width']}-h3-s1"
    # the size part's rows are neither renamed nor given a pretraining seed
    assert not any("pretrain_seed" in r for r in rows if r["part"] == "size")
    assert "finetune-w0.25-h3-layer1-1pct-sgd-0.01-s1" in {r["run"] for r in rows if r["part"] == "size"}


def test_selective_kernels_can_be_pretrained_once_per_seed_too(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "pretraining-seeds", "--replicate", "plain", "selective-kernels",
                  "memory")
    sk = {r["run"]: r for r in rows if r.get("sk_ratio")}
    assert {"pretrain-w0.25-h3-sk0.0625-s0", "pretrain-w0.25-h3-sk0.0625-s1"} <= set(sk)
    assert fake.configs["pretrain-w0.25-h3-sk0.0625-s1"].model.sk_ratio == 0.0625
    replicated = [r for r in sk.values() if r["part"] == "pretraining-seeds"]
    assert {(r["seed"], r["pretrain_seed"], r["labels"]) for r in replicated} == {(1, 1, "10/class"), (1, 1, "1%")}
    for r in replicated:
        assert Path(fake.configs[r["run"]].finetune.pretrained).name == "pretrain-w0.25-h3-sk0.0625-s1"
    # seed 0 is the Selective Kernels part's own run, from that part's pretraining
    assert {r["part"] for r in sk.values() if r["method"] == "fine-tuned" and r["seed"] == 0} == {"selective-kernels"}
    # the memory the same way, and neither variant's rows count as the plain encoder's
    assert fake.configs["pretrain-w0.25-h3-mem4096-s1"].pretrain.memory_size == 4096
    memory = [r for r in rows if r["part"] == "pretraining-seeds" and r["memory"]]
    assert {(r["seed"], r["pretrain_seed"], r["memory"]) for r in memory} == {(1, 1, 4096)} and len(memory) == 2
    _, cells = scale_size.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    replicated = scale_pretraining.pretraining_seed_cells(rows, cells)
    plain = [r for r in rows if r["part"] == "pretraining-seeds" and not r["memory"] and not r.get("sk_ratio")]
    assert replicated[(0.25, "1%")]["fine-tuned"][1] == next(r["test_top1"] for r in plain
                                                             if r["width"] == 0.25 and r["labels"] == "1%")
    assert set(scale_pretraining.pretraining_seed_variant_gains(rows, replicated, "memory")) == {
        (0.25, "10/class"), (0.25, "1%")}


def test_head_depths_can_be_pretrained_once_per_seed_too(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "head", "pretraining-seeds", "--replicate", "plain", "head")
    pretrained = [name for stage, name in fake.calls if stage == "pretrain"]
    for heads in (2, 3, 4):  # each depth pretrained once per seed, the 3-layer head's seed 1 shared with "plain"
        assert pretrained.count(f"pretrain-w0.25-h{heads}-s1") == 1
        assert fake.configs[f"pretrain-w0.25-h{heads}-s1"].model.head_layers == heads
        assert fake.configs[f"pretrain-w0.25-h{heads}-s1"].run.seed == 1
    own = [r for r in rows if r["part"] == "pretraining-seeds" and r["width"] == 0.25]
    assert {(r["head_layers"], r["head_layer"], r["labels"]) for r in own} == {
        (h, j, s) for h in (2, 3, 4) for j in range(h + 1) for s in ("10/class", "1%")}
    for r in own:
        assert r["seed"] == r["pretrain_seed"] == 1
        assert Path(fake.configs[r["run"]].finetune.pretrained).name == f"pretrain-w0.25-h{r['head_layers']}-s1"
        assert fake.configs[r["run"]].finetune.head_layer == r["head_layer"]
    # seed 0 is the head part's (one pretraining per depth), not run again
    assert not any(r["part"] == "pretraining-seeds" and r["seed"] == 0 for r in rows)
    assert pretrained.count("pretrain-w0.25-h2-s0") == 1
    # the size cells per pretraining seed take the 3-layer head's layer 1 only (scores told apart by head and layer)
    marked = [dict(r, test_top1=10.0 * r["head_layers"] + r["head_layer"]) if r in own else r for r in rows]
    _, cells = scale_size.size_table(marked, [0.25, 0.5], ["10/class", "1%"])
    replicated = scale_pretraining.pretraining_seed_cells(marked, cells)
    assert replicated[(0.25, "1%")]["fine-tuned"][1] == 31.0
    per_seed = scale_head.head_rows(rows, per_seed=True)
    assert {(r["seed"], r.get("pretrain_seed", 0)) for r in per_seed} == {(0, 0), (1, 1)}
    assert len(per_seed) == 2 * len(own)
    # a longer pretraining of seed 1 (--replicate pretrain-epochs) is not one of the head depths
    longer = dict(own[0], run="finetune-w0.25-h3-e5-pre1-layer1-1pct-sgd-0.01-s1", head_layers=3, head_layer=1,
                  pretrain_epochs=5)
    assert scale_head.head_rows(rows + [longer], per_seed=True) == per_seed


def test_the_memory_table_shows_each_pretrainings_knn_and_another_size_stays_out_of_the_per_seed_variant(fake,
                                                                                                        tmp_path):
    study(tmp_path, "--parts", "size", "memory", "pretraining-seeds", "--replicate", "plain", "memory")
    rows = study(tmp_path, "--parts", "memory", "--memory-size", "1024")
    knn = {"pretrain-w0.25-h3-s0": 75.0, "pretrain-w0.25-h3-mem4096-s0": 72.0, "pretrain-w0.25-h3-mem1024-s0": 74.0}
    rows = [dict(r, knn_val=knn.get(r["run"], r.get("knn_val"))) for r in rows]
    _, cells = scale_size.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    table = scale_variants.memory_table(rows, cells, ["10/class", "1%"], 0.999).splitlines()
    assert [line.split(" | ")[1:4] for line in table[2:4]] == [["1024", "0.999", "74.0 / 75.0"],
                                                               ["4096", "0.999", "72.0 / 75.0"]]
    # seed 0 of the per-seed memory variant is the 4096 memory's run, which was replicated, not the 1024 one's
    rows = [dict(r, test_top1=-1.0) if r["memory"] == 1024 else r for r in rows]
    replicated = scale_pretraining.pretraining_seed_cells(rows, cells)
    gains = scale_pretraining.pretraining_seed_variant_gains(rows, replicated, "memory")
    seed0 = next(r["test_top1"] for r in rows if r["part"] == "memory" and r["memory"] == 4096 and r["seed"] == 0
                 and r["labels"] == "1%")
    assert gains[(0.25, "1%")]["variant"][0] == seed0
    assert "width 0.25: " in scale_pretraining.pretraining_seed_table(rows, replicated)


def test_a_longer_pretraining_gets_its_own_runs_the_recorded_recipes_and_stays_out_of_the_size_table(fake, tmp_path):
    study(tmp_path, "--parts", "size")
    before = len(fake.calls)
    rows = study(tmp_path, "--parts", "pretrain-epochs", "--long-pretrain-epochs", "5")
    made = fake.calls[before:]
    pretrained = [name for stage, name in made if stage == "pretrain"]
    assert pretrained == ["pretrain-w0.25-h3-e5-s0", "pretrain-w0.5-h3-e5-s0"]
    assert fake.configs["pretrain-w0.25-h3-e5-s0"].pretrain.epochs == 5
    assert not any(stage == "supervised" for stage, _ in made)  # the size part's supervised runs are the pairs
    longer = [r for r in rows if r["part"] == "pretrain-epochs"]
    assert {(r["width"], r["labels"], r["seed"]) for r in longer} == {
        (w, s, seed) for w in (0.25, 0.5) for s in ("10/class", "1%") for seed in (0, 1)}
    for r in longer:  # the recipe recorded at 2 epochs, fine-tuned from the 5-epoch pretraining
        assert r["pretrain_epochs"] == 5 and r["recipe"] == "sgd-0.01"
        assert Path(fake.configs[r["run"]].finetune.pretrained).name == f"pretrain-w{r['width']}-h3-e5-s0"
    # scores told apart: the size table keeps the 2-epoch runs, the longer table pairs both with supervised
    rows = [dict(r, test_top1=r["test_top1"] + 10) if r in longer else r for r in rows]
    _, cells = scale_size.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    size_run = next(r for r in rows if r["run"] == "finetune-w0.25-h3-layer1-1pct-sgd-0.01-s0")
    assert cells[(0.25, "1%")]["fine-tuned"][0] == size_run["test_top1"]
    by_length = scale_pretraining.pretraining_length_cells(rows, cells)
    assert list(by_length) == [5]
    cell = by_length[5][(0.25, "1%")]
    assert cell["fine-tuned"][0] == size_run["test_top1"] + 10
    assert cell["gain"] == scale_stats.paired(cell["fine-tuned"], cells[(0.25, "1%")]["supervised"])
    table = scale_pretraining.pretraining_length_table(rows, by_length).splitlines()
    assert table[0].startswith("| width | labels | epochs | kNN, 2 epochs / longer |")
    assert " | 10.0 ± 0.0 (n=2) | " in table[3]  # longer − 2 epochs, paired by seed
    claims = scale_claims.claim(rows, cells, [0.25, 0.5], ["10/class", "1%"])
    assert any("(1%; widths 0.25, 0.5; paired by seed; pretrained 5 epochs)" in c for c in claims)


def test_a_longer_pretraining_per_seed_pairs_each_seed_with_its_own_pretrainings_and_leaves_the_others(fake, tmp_path):
    study(tmp_path, "--parts", "size", "pretraining-seeds", "pretrain-epochs", "--long-pretrain-epochs", "5")
    before = len(fake.calls)
    rows = study(tmp_path, "--parts", "pretraining-seeds", "--replicate", "pretrain-epochs",
                  "--long-pretrain-epochs", "5")
    made = fake.calls[before:]
    assert [name for stage, name in made if stage == "pretrain"] == ["pretrain-w0.25-h3-e5-s1",
                                                                    "pretrain-w0.5-h3-e5-s1"]
    assert fake.configs["pretrain-w0.5-h3-e5-s1"].pretrain.epochs == 5
    assert fake.configs["pretrain-w0.5-h3-e5-s1"].run.seed == 1
    longer = [r for r in rows if r["part"] == "pretraining-seeds" and r["pretrain_epochs"] == 5]
    assert {(r["width"], r["labels"], r["seed"], r["pretrain_seed"]) for r in longer} == {
        (w, s, 1, 1) for w in (0.25, 0.5) for s in ("10/class", "1%")}
    for r in longer:
        assert Path(fake.configs[r["run"]].finetune.pretrained).name == f"pretrain-w{r['width']}-h3-e5-s1"
    # seed 1's longer runs scored apart from everything else: they must not stand in for the 2-epoch ones
    rows = [dict(r, test_top1=r["test_top1"] + 10) if r in longer else r for r in rows]
    _, cells = scale_size.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    replicated = scale_pretraining.pretraining_seed_cells(rows, cells)
    two_epochs = next(r for r in rows if r["part"] == "pretraining-seeds" and r["pretrain_epochs"] == 2
                      and r["width"] == 0.25 and r["labels"] == "1%")
    assert replicated[(0.25, "1%")]["fine-tuned"][1] == two_epochs["test_top1"]
    shared = scale_pretraining.pretraining_length_cells(rows, cells)[5][(0.25, "1%")]
    assert set(shared["fine-tuned"]) == {0, 1} and all(  # seed 1 there fine-tuned seed 0's longer pretraining
        r["test_top1"] == shared["fine-tuned"][r["seed"]] for r in rows
        if r["part"] == "pretrain-epochs" and r["width"] == 0.25 and r["labels"] == "1%")
    per_seed = scale_pretraining.pretraining_length_cells(rows, replicated, per_seed=True)
    cell = per_seed[5][(0.25, "1%")]
    assert cell["fine-tuned"] == {0: shared["fine-tuned"][0], 1: next(
        r["test_top1"] for r in longer if r["width"] == 0.25 and r["labels"] == "1%") + 10}
    assert cell["shorter"] == replicated[(0.25, "1%")]["fine-tuned"]
    # a seed with no longer pretraining yet (seed 2 here) stays out of the shorter column too
    with_seed_2 = {key: dict(value, **{"fine-tuned": {**value["fine-tuned"], 2: 99.0}})
                   for key, value in replicated.items()}
    partial = scale_pretraining.pretraining_length_cells(rows, with_seed_2, per_seed=True)[5][(0.25, "1%")]
    assert partial["shorter"] == replicated[(0.25, "1%")]["fine-tuned"]
    table = scale_pretraining.pretraining_length_table(rows, per_seed, per_seed=True)
    assert table.startswith("kNN top-1 on validation after each pretraining: width 0.25: 2 epochs 70.0 (seed 0), "
                            "70.0 (seed 1); 5 epochs 70.0 (seed 0), 70.0 (seed 1); width 0.5:")
    assert "| 0.25 | 1% | 5 | 70.0 ± 0.0 (n=2) / 70.0 ± 0.0 (n=2) |" in table  # each length's mean over the seeds
    claims = scale_claims.claim(rows, cells, [0.25, 0.5], ["10/class", "1%"])
    assert any("(1%; widths 0.25, 0.5; paired by seed; pretrained 5 epochs; a pretraining per seed)" in c
               for c in claims)
    assert "A longer pretraining per seed" in scale_report.report(rows)[0]
