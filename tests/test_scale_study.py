"""The scale study's plan, with fake stages (the real runs take hours): which runs it makes from which configs, that
recipes are chosen on validation only, that finished runs are reused, and that each part's runs land in their own
report section (tests/test_scale_pretraining.py: the pretraining-seeds and longer-pretraining parts;
tests/test_scale_report.py tests the report on rows written by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark
from scale_study_helpers import fake_stages, study

scale_distill = load_benchmark("scale_distill")
scale_pretraining = load_benchmark("scale_pretraining")
scale_report = load_benchmark("scale_report")
scale_size = load_benchmark("scale_size")
scale_study = load_benchmark("scale_study")
scale_variants = load_benchmark("scale_variants")


@pytest.fixture
def fake(monkeypatch):
    return fake_stages(monkeypatch)


def test_each_width_gets_its_own_recipes_chosen_on_validation(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size")
    size = [r for r in rows if r["part"] == "size"]
    assert {r["recipe"] for r in size if r["method"] == "fine-tuned"} == {"sgd-0.01"}
    assert {r["recipe"] for r in size if r["method"] == "supervised"} == {"sgd-0.1"}
    # 2 widths x (1 pretraining + 3 + 3 candidates at 1 %, seed 0 + 2 methods x 2 subsets x 2 seeds - 2 reused)
    assert len(fake.calls) == 2 * (1 + 6 + 8 - 2)
    assert sum(stage == "pretrain" for stage, _ in fake.calls) == 2
    pretrained = {r["run"]: r for r in rows if r["method"] == "pretraining"}
    assert set(pretrained) == {"pretrain-w0.25-h3-s0", "pretrain-w0.5-h3-s0"}


def test_finished_runs_are_reused_on_a_rerun(fake, tmp_path):
    first = study(tmp_path, "--parts", "size")
    calls = len(fake.calls)
    second = study(tmp_path, "--parts", "size")
    assert len(fake.calls) == calls
    assert sorted(map(json.dumps, first)) == sorted(map(json.dumps, second))


def test_distillation_starts_each_student_from_its_own_pretraining(fake, tmp_path, monkeypatch):
    configs = {}
    fake_distill = scale_study.STAGES["distill"]
    monkeypatch.setitem(scale_study.STAGES, "distill", lambda config, run_dir, resume=False:
                        configs.setdefault(Path(run_dir).name, config) and fake_distill(config, run_dir))
    rows = study(tmp_path, "--parts", "size", "distill", "big-to-small")
    self_distilled = [c for c in configs.values() if c.distill.student == "teacher"]
    big_to_small = [c for c in configs.values() if c.distill.student == "model"]
    assert len(self_distilled) == 2 * 2 * 2  # widths x subsets x seeds; big-to-small reuses the width-0.5 ones
    for c in self_distilled:
        assert Path(c.distill.student_pretrained).name == f"pretrain-w{c.model.width_multiplier}-h3-s0"
    assert len(big_to_small) == 2 * 2  # the chosen teacher width's self-distilled networks, each subset and seed
    for c in big_to_small:
        assert c.model.width_multiplier == 0.25
        assert Path(c.distill.student_pretrained).name == "pretrain-w0.25-h3-s0"
        assert Path(c.distill.teacher).name.startswith("distill-finetune-w0.5-")
    assert {r["method"] for r in rows if r["run"].startswith("distill")} == {"distilled", "big-to-small"}


def test_a_distilled_row_carries_its_teachers_scores_and_is_compared_with_them(fake, tmp_path):
    rows = {r["run"]: r for r in study(tmp_path, "--parts", "size", "distill")}
    student = rows["distill-finetune-w0.5-h3-layer1-1pct-sgd-0.01-s1-e2"]
    teacher = rows["finetune-w0.5-h3-layer1-1pct-sgd-0.01-s1"]
    assert (student["teacher_val_top1"], student["teacher_test_top1"]) == (teacher["val_top1"], teacher["test_top1"])
    # the teacher's row redone later (another pretraining): the student is still compared with its own teacher
    redone = dict(teacher, test_top1=teacher["test_top1"] + 3.0)
    table_rows = [redone if r["run"] == teacher["run"] else r for r in rows.values()]
    _, cells, *_ = scale_report.report(table_rows)
    gains = cells[(0.5, "1%")]["distill_gain"]
    assert gains == [pytest.approx(rows[f"distill-finetune-w0.5-h3-layer1-1pct-sgd-0.01-s{s}-e2"]["test_top1"]
                                   - rows[f"finetune-w0.5-h3-layer1-1pct-sgd-0.01-s{s}"]["test_top1"])
                     for s in (0, 1)]
    assert cells[(0.5, "1%")]["fine-tuned"][1] == redone["test_top1"]


def test_big_to_small_takes_the_teacher_width_with_the_best_fine_tuning_validation(fake, tmp_path, monkeypatch):
    """Wider is not assumed better: with width 1's grid scoring below width 0.5's on validation, the teacher is
    width 0.5, its grid read from the results file, and width 1 is never pretrained."""
    results = tmp_path / "results.jsonl"
    recorded = [{"run": f"finetune-w{w}-h3-layer1-1pct-{recipe}-s0", "part": "recipe", "val_top1": val}
                for w, best in ((0.5, 82.1), (1.0, 81.3)) for recipe, val in
                (("sgd-0.003", best - 1), ("sgd-0.01", best), ("sgd-0.03", best - 0.5))]
    results.write_text("".join(json.dumps(r) + "\n" for r in recorded))
    teachers = []
    fake_distill = scale_study.STAGES["distill"]
    monkeypatch.setitem(scale_study.STAGES, "distill", lambda config, run_dir, resume=False:
                        teachers.append(Path(config.distill.teacher).name) or fake_distill(config, run_dir))
    scale_study.main(["--widths", "0.25", "0.5", "1", "--subsets", "1%", "--seeds", "0", "--parts", "big-to-small",
                      "--out", str(tmp_path / "runs"), "--results", str(results)])
    assert teachers == ["finetune-w0.5-h3-layer1-1pct-sgd-0.01-s0",
                        "distill-finetune-w0.5-h3-layer1-1pct-sgd-0.01-s0-e2"]
    assert ("pretrain", "pretrain-w1.0-h3-s0") not in fake.calls
    assert not any(stage == "supervised" for stage, _ in fake.calls)
    assert sum(name.startswith("finetune-w0.5") for _, name in fake.calls) == 1  # the grid was read, not rerun


def test_a_reused_run_keeps_the_part_it_was_recorded_under(fake, tmp_path):
    """The head part's layer-1 run of the 3-layer head is the size part's run; rerunning the head part must
    not move it out of the size table (a chosen grid candidate, recorded as "recipe", does move)."""
    rows = {r["run"]: r["part"] for r in study(tmp_path, "--parts", "size")}
    assert rows["finetune-w0.25-h3-layer1-1pct-sgd-0.01-s0"] == "size"
    assert rows["finetune-w0.25-h3-layer1-1pct-sgd-0.003-s0"] == "recipe"
    rows = {r["run"]: r["part"] for r in study(tmp_path, "--parts", "head", "--head-depths", "3")}
    assert rows["finetune-w0.25-h3-layer1-10-per-class-sgd-0.01-s0"] == "size"
    assert rows["finetune-w0.25-h3-layer0-10-per-class-sgd-0.01-s0"] == "head"


def test_head_depth_fine_tunes_from_every_layer(fake, tmp_path):
    rows = study(tmp_path, "--parts", "head")
    head = [r for r in rows if r["part"] == "head"]
    assert {(r["head_layers"], r["head_layer"]) for r in head} == {(h, j) for h in (2, 3, 4) for j in range(h + 1)}
    assert {r["labels"] for r in head} == {"10/class", "1%"}


def test_report_pairs_by_seed_and_states_each_claim(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size")
    text, cells, widths, subsets = scale_report.report(rows)
    gain = cells[(0.5, "1%")]["gain"]
    ft, sup = cells[(0.5, "1%")]["fine-tuned"], cells[(0.5, "1%")]["supervised"]
    assert gain == [ft[s] - sup[s] for s in (0, 1)]
    assert "fine-tuned − supervised grows with width (1%" in text
    assert "| sgd-0.003 |" in text and "| sgd-0.3 |" in text  # every candidate of the grid is reported


def test_distillation_recipes_are_compared_from_the_same_teacher(fake, tmp_path, monkeypatch):
    configs = []
    fake_distill = scale_study.STAGES["distill"]
    monkeypatch.setitem(scale_study.STAGES, "distill",
                        lambda config, run_dir, resume=False: configs.append(config) or fake_distill(config, run_dir))
    rows = study(tmp_path, "--parts", "distill-recipes", "--widths", "0.25")
    assert {(c.distill.optimizer.name, c.distill.optimizer.base_lr, c.distill.temperature) for c in configs} == \
        set(scale_study.DISTILL_GRID.values())
    assert len({c.distill.teacher for c in configs}) == 1
    text, *_ = scale_report.report(rows)
    assert "| adamw-1e-3-t0.1 |" in text


def test_pretraining_temperature_is_chosen_by_the_fine_tuned_validation_mean(fake, tmp_path):
    rows = study(tmp_path, "--parts", "temperature")
    pretrained = {r["run"]: r["pretrain_temperature"] for r in rows if r["method"] == "pretraining"}
    assert pretrained == {"pretrain-w0.25-h3-s0": 0.2, "pretrain-w0.25-h3-t0.1-s0": 0.1,
                          "pretrain-w0.25-h3-t0.5-s0": 0.5}
    swept = [r for r in rows if r["part"] == "temperature"]
    assert {(r["pretrain_temperature"], r["seed"], r["recipe"]) for r in swept} == {
        (t, s, "sgd-0.01") for t in (0.1, 0.5) for s in (0, 1)}
    text, cells, *_ = scale_report.report(rows)
    assert "(chosen on validation: τ 0.1)" in text
    assert "| 0.5 |" in text and "| 0.2 |" in text
    # the swept runs share facts with the size part's cells but must not land in them
    base = {r["seed"]: r["test_top1"] for r in rows
            if r["run"].startswith("finetune-w0.25-h3-layer1-1pct-sgd-0.01-s")}
    assert cells[(0.25, "1%")]["fine-tuned"] == base and len(base) == 2


def test_a_recipe_is_chosen_once_and_a_rerun_candidate_cannot_switch_it(fake, tmp_path):
    """Run directories lost (another machine), the chosen candidate rerun from a new pretraining scores lower on
    validation: the recorded choice stands for every later seed, and the report shows the scores it was made on."""
    import shutil

    rows = study(tmp_path, "--parts", "size", "--widths", "0.25")
    choice = next(r for r in rows if r["run"] == "choice-finetune-pretrain-w0.25-h3-s0")
    assert choice["recipe"] == "sgd-0.01" and set(choice["scores"]) == set(scale_study.FINETUNE_GRID)
    results = tmp_path / "results.jsonl"
    lowered = [dict(r, val_top1=1.0) if r["run"] == "finetune-w0.25-h3-layer1-1pct-sgd-0.01-s0" else r for r in rows]
    results.write_text("".join(json.dumps(r) + "\n" for r in lowered))
    shutil.rmtree(tmp_path / "runs")
    fake.calls.clear()
    scale_study.main(["--widths", "0.25", "--subsets", "1%", "--seeds", "0", "1", "2", "--parts", "size",
                      "--out", str(tmp_path / "runs"), "--results", str(results)])
    assert {name for stage, name in fake.calls if stage == "finetune"} == {
        f"finetune-w0.25-h3-layer1-1pct-sgd-0.01-s{seed}" for seed in (0, 1, 2)}
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert scale_size.chosen_recipes(rows)[(0.25, "fine-tuned")] == "sgd-0.01"
    assert f"| **sgd-0.01** | {choice['scores']['sgd-0.01']:.1f} |" in scale_size.recipe_table(rows)


def test_selective_kernels_pretrain_their_own_encoder_and_stay_out_of_the_size_table(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "selective-kernels", "--widths", "0.25")
    sk = [r for r in rows if r["part"] == "selective-kernels"]
    assert {(r["method"], r["labels"], r["seed"]) for r in sk} == {
        (m, s, seed) for m in ("fine-tuned", "supervised") for s in ("10/class", "1%") for seed in (0, 1)}
    # the plain encoder's recipes, chosen on validation: sgd-0.01 fine-tuned, sgd-0.1 supervised
    assert {(r["method"], r["recipe"]) for r in sk} == {("fine-tuned", "sgd-0.01"), ("supervised", "sgd-0.1")}
    assert all(r["sk_ratio"] == 0.0625 and r["head_layer"] == 1 for r in sk)
    # the part's pretraining and every run of it build the encoder with Selective Kernels; fine-tuning starts
    # from that pretraining
    assert fake.configs["pretrain-w0.25-h3-sk0.0625-s0"].model.sk_ratio == 0.0625
    assert all(fake.configs[r["run"]].model.sk_ratio == 0.0625 for r in sk)
    assert all(fake.configs[r["run"]].finetune.pretrained.endswith("pretrain-w0.25-h3-sk0.0625-s0") for r in sk
               if r["method"] == "fine-tuned")
    assert fake.configs["pretrain-w0.25-h3-s0"].model.sk_ratio == 0.0

    # Selective Kernels' rows (same width, head, layer and recipes) would otherwise land in the plain encoder's cells
    rows = [dict(r, test_top1=r["test_top1"] + (5 if r["method"] == "fine-tuned" else 1))
            if r["part"] == "selective-kernels" else r for r in rows]
    text, cells, _, _ = scale_report.report(rows)
    for method in ("fine-tuned", "supervised"):
        plain = {r["seed"]: r["test_top1"] for r in rows if r["part"] == "size" and r["method"] == method
                 and r["labels"] == "1%"}
        assert cells[(0.25, "1%")][method] == plain
    table = scale_variants.selective_kernels_table(rows, cells, ["1%"]).splitlines()
    assert table[0] == ("Width 0.25: 1.04 M encoder parameters with Selective Kernels (kNN 70.0 after pretraining), "
                        "0.70 M without (kNN 70.0).")
    assert table[4].startswith("| 0.25 | 1% | fine-tuned |") and table[4].endswith("| 5.0 ± 0.0 (n=2) |")
    assert table[5].startswith("| 0.25 | 1% | supervised |") and table[5].endswith("| 1.0 ± 0.0 (n=2) |")
    assert ("| Selective Kernels − plain encoder, fine-tuned (1%) > 0 at every width | +6.6 at 1 %, +3.7 at 10 % "
            "(ResNet-50, ImageNet) | width 0.25: 5.0 ± 0.0 (n=2) | holds |") in text


def test_a_deeper_encoder_gets_its_own_runs_and_recipes_and_stays_out_of_the_size_table(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "encoder-depth", "--widths", "0.25", "--encoder-depths", "18", "50")
    deep = [r for r in rows if r["part"] == "encoder-depth"]
    assert {(r["method"], r["labels"], r["seed"]) for r in deep} == {
        (m, s, seed) for m in ("fine-tuned", "supervised") for s in ("10/class", "1%") for seed in (0, 1)}
    # its own recipes, chosen on validation (the fake prefers other learning rates for a deeper encoder)
    assert {(r["method"], r["recipe"]) for r in deep} == {("fine-tuned", "sgd-0.03"), ("supervised", "sgd-0.3")}
    assert all(r["depth"] == 50 and r["width"] == 0.25 for r in deep)
    choices = {r["run"]: r for r in rows if r["method"] == "choice"}
    assert choices["choice-finetune-pretrain-d50-w0.25-h3-s0"]["depth"] == 50
    assert "depth" not in choices["choice-finetune-pretrain-w0.25-h3-s0"]
    # ResNet-18 is the size part's runs, not run again; ResNet-50 is pretrained once and every run builds it
    assert len(fake.calls) == 2 * (1 + 6 + 8 - 2)
    assert fake.configs["pretrain-d50-w0.25-h3-s0"].model.depth == 50
    assert all(fake.configs[r["run"]].model.depth == 50 for r in deep)
    assert all(fake.configs[r["run"]].finetune.pretrained.endswith("pretrain-d50-w0.25-h3-s0") for r in deep
               if r["method"] == "fine-tuned")
    assert all("depth" not in r for r in rows if r["part"] == "size")
    # the deeper encoder's rows would otherwise land in ResNet-18's cells of the size table
    lifted = [dict(r, test_top1=r["test_top1"] + (5 if r["method"] == "fine-tuned" else 1))
              if r["part"] == "encoder-depth" else r for r in rows]
    text, cells, _, _ = scale_report.report(lifted)
    plain = {r["seed"]: r["test_top1"] for r in rows if r["part"] == "size" and r["method"] == "fine-tuned"
             and r["labels"] == "1%"}
    assert cells[(0.25, "1%")]["fine-tuned"] == plain
    assert "| **sgd-0.03** |" not in scale_size.recipe_table(lifted)  # ResNet-18's choices only
    # its own section: ResNet-18 from the size table, ResNet-50 paired by seed with it, and the claims by depth
    section = text[text.index("Encoder depth"):].splitlines()
    assert section[4].startswith("| ResNet-18 width 0.25 (0.70 M) | 10/class |") and section[4].endswith("| – |")
    assert section[7] == ("| ResNet-50 width 0.25 (1.48 M) | 1% | 99.0 ± 0.7 (n=2) | 104.0 ± 0.7 (n=2) | "
                          "5.0 ± 0.0 (n=2) | 5.0 ± 0.0 (n=2) |")
    assert "| ResNet-50 width 0.25 | fine-tuned | **sgd-0.03** | 51.5 |" in section
    assert ("| fine-tuned − supervised grows with depth (1%; depths 18, 50; paired by seed; width 0.25) | grows | "
            "+1.0 (n=2) → +5.0 (n=2) | holds |") in text
    assert ("| ResNet-50 − ResNet-18: fine-tuned spread ≥ 2× supervised spread (1 %; width 0.25) | ~17 vs ~4 points "
            "(ImageNet) | +5.0 vs +1.0 (fine-tuned paired by seed: 5.0 ± 0.0 (n=2)) | holds |") in text
    assert "| pretrain-d50-w0.25-h3-s0 | 2 | 70.0 |" in text


def test_a_deeper_encoder_at_a_width_the_size_table_lacks_adds_no_row_there(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "encoder-depth", "--widths", "0.25", "--head-width", "0.5",
                  "--encoder-depths", "50")
    text, cells, widths, _ = scale_report.report(rows)
    assert widths == [0.25] and {w for w, _ in cells} == {0.25}
    section = text[text.index("Encoder depth"):].splitlines()
    assert [line.split(" | ")[0] for line in section[4:6]] == ["| ResNet-50 width 0.5 (5.89 M)"] * 2


def test_a_deeper_encoder_can_be_pretrained_once_per_seed_with_its_own_recipe(fake, tmp_path):
    rows = study(tmp_path, "--parts", "size", "encoder-depth", "pretraining-seeds", "--widths", "0.25",
                  "--encoder-depths", "18", "50", "--replicate", "plain", "encoder-depth")
    per_seed = [r for r in rows if r["part"] == "pretraining-seeds" and r["method"] == "fine-tuned"]
    deep = [r for r in per_seed if r.get("depth") == 50]
    assert {(r["labels"], r["seed"], r["pretrain_seed"], r["recipe"]) for r in deep} == {
        (labels, 1, 1, "sgd-0.03") for labels in ("10/class", "1%")}  # its own recipe; seed 0 is its part's
    assert all(fake.configs[r["run"]].finetune.pretrained.endswith("pretrain-d50-w0.25-h3-s1") for r in deep)
    assert fake.configs["pretrain-d50-w0.25-h3-s1"].model.depth == 50
    assert fake.configs["pretrain-d50-w0.25-h3-s1"].run.seed == 1
    assert sum(stage == "pretrain" for stage, _ in fake.calls) == 4  # ResNet-18 and -50, each at seeds 0 and 1

    # seed 1 from its own pretraining scores 3 more: the per-seed section uses it, the shared one does not, and the
    # ResNet-18 per-seed table keeps its own rows
    lifted = [dict(r, test_top1=r["test_top1"] + 3) if r in deep else r for r in rows]
    text, cells, _, _ = scale_report.report(lifted)
    # the results file keeps the order runs were first recorded in: per-seed runs after the shared ones read the same
    per_seed_last = [r for r in lifted if r.get("pretrain_seed")]
    per_seed_last = [r for r in lifted if r not in per_seed_last] + per_seed_last
    assert scale_report.report(per_seed_last)[0] == text
    shared, per_seed_section = text[text.index("Encoder depth ("):].split("Encoder depth, a pretraining per seed")
    assert ("| ResNet-50 width 0.25 (1.48 M) | 1% | 98.0 ± 0.7 (n=2) | 99.0 ± 0.7 (n=2) | 1.0 ± 0.0 (n=2) | "
            "0.0 ± 0.0 (n=2) |") in shared
    assert ("| ResNet-50 width 0.25 (1.48 M) | 1% | 98.0 ± 0.7 (n=2) | 100.5 ± 2.8 (n=2) | 2.5 ± 2.1 (n=2) | "
            "1.5 ± 2.1 (n=2) |") in per_seed_section
    assert ("| fine-tuned − supervised grows with depth (1%; depths 18, 50; paired by seed; width 0.25; a "
            "pretraining per seed) | grows | +1.0 (n=2) → +2.5 (n=2) | holds |") in text
    plain = scale_pretraining.pretraining_seed_cells([r for r in lifted if not r.get("depth")], cells)
    assert "| 0.25 | 1% | 98.0 ± 0.7 (n=2) | 99.0 ± 0.7 (n=2) | 99.0 ± 0.7 (n=2) |" in text
    assert plain[(0.25, "1%")]["fine-tuned"] == {0: 98.5, 1: 99.5}


def test_distillation_with_labels_uses_the_distill_parts_teachers_and_is_paired_with_their_students(fake, tmp_path):
    rows = {r["run"]: r for r in study(tmp_path, "--parts", "size", "distill", "distill-labels", "--widths", "0.25",
                                        "--distill-alpha", "0.25")}
    with_labels = {name: r for name, r in rows.items() if r["part"] == "distill-labels"}
    assert len(with_labels) == 2 * 2  # subsets x seeds at the one width
    name = "distill-finetune-w0.25-h3-layer1-1pct-sgd-0.01-s1-e2-a0.25"
    config = fake.configs[name]
    assert (config.distill.alpha, config.distill.student, config.finetune.labels, config.run.seed) == (
        0.25, "teacher", "1%", 1)
    assert Path(config.distill.teacher).name == "finetune-w0.25-h3-layer1-1pct-sgd-0.01-s1"
    assert with_labels[name]["distill_alpha"] == 0.25
    # the fake scores ignore alpha, so with and without labels tie; a student of another teacher is not paired
    table = scale_distill.distill_labels_table(list(rows.values()), ["10/class", "1%"])
    assert "| 0.25 | 1% | 2 | 0.25 |" in table and table.count("| 0.0 ± 0.0 (n=2) |") == 2
    other = "distill-finetune-w0.25-h3-layer1-1pct-sgd-0.01-s1-e2"
    rows[other] = dict(rows[other], teacher_test_top1=0.0)
    table = scale_distill.distill_labels_table(list(rows.values()), ["10/class", "1%"])
    assert table.splitlines()[3].endswith("| 0.0 ± 0.0 (n=1) |")  # 1 %: seed 0 only
    assert table.splitlines()[2].endswith("| 0.0 ± 0.0 (n=2) |")  # 10/class comes first, as in every table


def test_a_memory_momentum_other_than_the_base_configs_gets_its_own_runs_and_table_rows(fake, tmp_path):
    study(tmp_path, "--parts", "size", "memory")
    rows = study(tmp_path, "--parts", "memory", "--memory-momentum", "0.99")
    config = fake.configs["pretrain-w0.25-h3-mem4096-m0.99-s0"]
    assert (config.pretrain.memory_size, config.pretrain.memory_momentum) == (4096, 0.99)
    tuned = [r for r in rows if r.get("memory_momentum") == 0.99 and r["method"] == "fine-tuned"]
    assert len(tuned) == 4 and {r["part"] for r in tuned} == {"memory"}
    assert all(Path(fake.configs[r["run"]].finetune.pretrained).name == "pretrain-w0.25-h3-mem4096-m0.99-s0"
               for r in tuned)
    _, cells = scale_size.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    table = scale_variants.memory_table(rows, cells, ["10/class", "1%"], 0.999)
    assert [line.split(" | ")[2] for line in table.splitlines()[2:]] == ["0.99", "0.999", "0.99", "0.999"]
    # the pretraining-seeds part's memory variant is the base momentum's: seed 0 must not be the 0.99 run
    memory_seed0 = {r["labels"]: r["test_top1"] for r in rows if r["part"] == "memory" and r["seed"] == 0
                    and "memory_momentum" not in r}
    replicated = {(0.25, labels): {"fine-tuned": {0: 1.0, 1: 1.0}} for labels in memory_seed0}
    rows.append({**next(r for r in rows if r["part"] == "memory" and "memory_momentum" not in r and r["seed"] == 0
                        and r["labels"] == "1%"), "run": "replicated", "part": "pretraining-seeds", "seed": 1,
                 "pretrain_seed": 1})
    rows = [dict(r, test_top1=-1.0) if r.get("memory_momentum") else r for r in rows]  # tell the two apart
    gains = scale_pretraining.pretraining_seed_variant_gains(rows, replicated, "memory")
    assert gains[(0.25, "1%")]["variant"][0] == memory_seed0["1%"]
