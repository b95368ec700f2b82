"""The scale study's plan and report, with fake stages (the real runs take hours): which runs it makes from which
configs, that recipes are chosen on validation only, that finished runs are reused, and the paired report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from simclrv2.results import ClassificationScores, StageResult

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # scale_report imports readme_block as the scripts do
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


scale_study = _load("scale_study")
scale_report = _load("scale_report")


def _scores(top1: float) -> ClassificationScores:
    return ClassificationScores(top1, {}, [[1]], ["a"])


class FakeStages:
    """Stage functions that record their calls and give scores that depend on the config (never on test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.configs: dict[str, object] = {}

    def make(self, stage: str):
        def run(config, run_dir, resume=False):
            run_dir = Path(run_dir)
            if (run_dir / "result.json").exists():
                return StageResult.read(run_dir)
            self.calls.append((stage, run_dir.name))
            self.configs[run_dir.name] = config
            width = config.model.width_multiplier
            lr = {"finetune": config.finetune.optimizer.base_lr,
                  "supervised": config.supervised.optimizer.base_lr}.get(stage, 0.0)
            # validation prefers lr 0.01 (fine-tuning) / 0.1 (supervised), 0.03 / 0.3 for a deeper encoder than
            # ResNet-18; test ranks the candidates the other way round, so a choice made on test would be visible
            deeper = config.model.depth != 18
            best_lr = (0.03 if deeper else 0.01) if stage == "finetune" else (0.3 if deeper else 0.1)
            val = 0.5 + width / 10 - abs(lr - best_lr)
            if stage == "finetune":  # pretraining at τ 0.1 fine-tunes best
                val -= abs(config.pretrain.temperature - 0.1) / 10
            test = 1.5 - val + config.run.seed / 100
            details = ({"knn_top1": 0.7} if stage == "pretrain" else
                       {"teacher": config.distill.teacher} if stage == "distill" else {})
            result = StageResult(stage, str(run_dir), None, None if stage == "pretrain" else _scores(val),
                                 None if stage == "pretrain" else _scores(test), details)
            run_dir.mkdir(parents=True)
            (run_dir / "result.json").write_text(json.dumps(result.to_json()))
            return result
        return run


@pytest.fixture
def fake(monkeypatch):
    stages = FakeStages()
    monkeypatch.setattr(scale_study, "STAGES", {s: stages.make(s) for s in scale_study.STAGES})
    return stages


def _study(tmp_path, *extra: str) -> list[dict]:
    results = tmp_path / "results.jsonl"
    scale_study.main(["--widths", "0.25", "0.5", "--subsets", "10/class", "1%", "--seeds", "0", "1",
                      "--out", str(tmp_path / "runs"), "--results", str(results), *extra])
    return [json.loads(line) for line in results.read_text().splitlines()]


def test_each_width_gets_its_own_recipes_chosen_on_validation(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size")
    size = [r for r in rows if r["part"] == "size"]
    assert {r["recipe"] for r in size if r["method"] == "fine-tuned"} == {"sgd-0.01"}
    assert {r["recipe"] for r in size if r["method"] == "supervised"} == {"sgd-0.1"}
    # 2 widths x (1 pretraining + 3 + 3 candidates at 1 %, seed 0 + 2 methods x 2 subsets x 2 seeds - 2 reused)
    assert len(fake.calls) == 2 * (1 + 6 + 8 - 2)
    assert sum(stage == "pretrain" for stage, _ in fake.calls) == 2
    pretrained = {r["run"]: r for r in rows if r["method"] == "pretraining"}
    assert set(pretrained) == {"pretrain-w0.25-h3-s0", "pretrain-w0.5-h3-s0"}


def test_finished_runs_are_reused_on_a_rerun(fake, tmp_path):
    first = _study(tmp_path, "--parts", "size")
    calls = len(fake.calls)
    second = _study(tmp_path, "--parts", "size")
    assert len(fake.calls) == calls
    assert sorted(map(json.dumps, first)) == sorted(map(json.dumps, second))


def test_distillation_starts_each_student_from_its_own_pretraining(fake, tmp_path, monkeypatch):
    configs = {}
    fake_distill = scale_study.STAGES["distill"]
    monkeypatch.setitem(scale_study.STAGES, "distill", lambda config, run_dir, resume=False:
                        configs.setdefault(Path(run_dir).name, config) and fake_distill(config, run_dir))
    rows = _study(tmp_path, "--parts", "size", "distill", "big-to-small")
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
    rows = {r["run"]: r for r in _study(tmp_path, "--parts", "size", "distill")}
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
    rows = {r["run"]: r["part"] for r in _study(tmp_path, "--parts", "size")}
    assert rows["finetune-w0.25-h3-layer1-1pct-sgd-0.01-s0"] == "size"
    assert rows["finetune-w0.25-h3-layer1-1pct-sgd-0.003-s0"] == "recipe"
    rows = {r["run"]: r["part"] for r in _study(tmp_path, "--parts", "head", "--head-depths", "3")}
    assert rows["finetune-w0.25-h3-layer1-10-per-class-sgd-0.01-s0"] == "size"
    assert rows["finetune-w0.25-h3-layer0-10-per-class-sgd-0.01-s0"] == "head"


def test_head_depth_fine_tunes_from_every_layer(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "head")
    head = [r for r in rows if r["part"] == "head"]
    assert {(r["head_layers"], r["head_layer"]) for r in head} == {(h, j) for h in (2, 3, 4) for j in range(h + 1)}
    assert {r["labels"] for r in head} == {"10/class", "1%"}


def test_report_pairs_by_seed_and_states_each_claim(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size")
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
    rows = _study(tmp_path, "--parts", "distill-recipes", "--widths", "0.25")
    assert {(c.distill.optimizer.name, c.distill.optimizer.base_lr, c.distill.temperature) for c in configs} == \
        set(scale_study.DISTILL_GRID.values())
    assert len({c.distill.teacher for c in configs}) == 1
    text, *_ = scale_report.report(rows)
    assert "| adamw-1e-3-t0.1 |" in text


def test_pretraining_temperature_is_chosen_by_the_fine_tuned_validation_mean(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "temperature")
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


def _cell(sup: dict, ft: dict, kd: dict | None = None) -> dict:
    return {"supervised": sup, "fine-tuned": ft, "distilled": kd or {},
            "gain": scale_report.paired(ft, sup), "distill_gain": scale_report.paired(kd or {}, ft)}


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
    claims = scale_report.claim(rows, cells, [0.25, 1.0], ["10/class", "1%"])
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
    claims = scale_report.claim(rows, cells, [0.25, 1.0], ["10/class", "1%"])
    assert "| +0.5 (n=2) → +0.0 (n=2) | **does not hold** |" in claims[1]
    assert claims[2].endswith("| +1.5 vs +2.0 (fine-tuned paired by seed: 1.5 ± 0.0 (n=2)) | **does not hold** |")
    assert claims[3].endswith("| 1.5 ± 0.0 (n=2) | **does not hold** |")


def test_self_distillation_holds_only_where_every_width_gains_on_its_own_teacher():
    cells = {(0.25, "1%"): _cell({0: 80, 1: 81}, {0: 80.5, 1: 81.5}, {0: 81.0, 1: 81.5}),
             (1.0, "1%"): _cell({0: 82, 1: 83}, {0: 85, 1: 86}, {1: 85.0, 2: 90.0})}
    claims = scale_report._self_distillation_claims(cells, [0.25, 1.0], ["1%"])
    # width 1 pairs seed 1 only (seed 2 has no fine-tuned teacher): 85 - 86 = -1
    assert claims == ["| self-distilled − its own fine-tuned teacher (1%) > 0 at every width | +1.7 at 1 %, +0.8 "
                      "at 10 % (R152-3×-SK, ImageNet) | width 0.25: 0.2 ± 0.4 (n=2), width 1: -1.0 ± 0.0 (n=1) | "
                      "**does not hold** (within the seed spread at a width) |"]
    cells[(1.0, "1%")]["distill_gain"] = []  # a width without self-distilled runs is left out, not counted a loss
    assert scale_report._self_distillation_claims(cells, [0.25, 1.0], ["1%"])[0].endswith(
        "| width 0.25: 0.2 ± 0.4 (n=2) | holds (within the seed spread at a width) |")
    cells[(0.25, "1%")]["distill_gain"] = []
    assert scale_report._self_distillation_claims(cells, [0.25, 1.0], ["1%"]) == []


def test_a_recipe_is_chosen_once_and_a_rerun_candidate_cannot_switch_it(fake, tmp_path):
    """Run directories lost (another machine), the chosen candidate rerun from a new pretraining scores lower on
    validation: the recorded choice stands for every later seed, and the report shows the scores it was made on."""
    import shutil

    rows = _study(tmp_path, "--parts", "size", "--widths", "0.25")
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
    assert scale_report.chosen_recipes(rows)[(0.25, "fine-tuned")] == "sgd-0.01"
    assert f"| **sgd-0.01** | {choice['scores']['sgd-0.01']:.1f} |" in scale_report.recipe_table(rows)


def test_self_distillation_lengths_get_their_own_table_and_the_size_table_keeps_the_default():
    def student(seed: int, epochs: int | None, test: float) -> dict:
        row = {"method": "distilled", "part": "distill", "width": 0.25, "labels": "1%", "seed": seed,
               "test_top1": test, "teacher_test_top1": 80.0}
        return row if epochs is None else dict(row, distill_epochs=epochs)

    rows = [student(0, None, 80.5), student(1, 2, 81.0), student(0, 5, 82.0), student(1, 5, 81.0)]
    assert [r["test_top1"] for r in scale_report.self_distilled(rows, 0.25, "1%")] == [80.5, 81.0]
    cells = {(0.25, "1%"): _cell({0: 79.0, 1: 79.0}, {0: 80.0, 1: 80.0})}
    assert scale_report.distill_length_table(rows, cells).splitlines()[2:] == [
        "| 0.25 | 1% | 2 | 80.8 ± 0.4 (n=2) | 0.8 ± 0.4 (n=2) |",
        "| 0.25 | 1% | 5 | 81.5 ± 0.7 (n=2) | 1.5 ± 0.7 (n=2) |"]
    assert scale_report.distill_length_table(rows[:2], cells) == ""  # one length: the size table says it all


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
    assert scale_report.chosen_head_layers(scale_report.head_rows(rows)) == {(2, "1%"): 2, (3, "1%"): 1}
    table = scale_report.head_table(scale_report.head_rows(rows), ["1%"]).splitlines()
    assert table[2:5] == ["| 2 | 0 | 70.0 ± 0.0 (n=2) |", "| 2 | 1 | 79.0 ± 0.0 (n=2) |",
                          "| 2 | 2 | **76.0 ± 1.4 (n=2)** |"]
    assert table[6] == "| 3 | 1 | **76.5 ± 0.7 (n=2)** |"
    # 3-layer from layer 1 (76, 77) − 2-layer from layer 2 (75, 77), paired by seed: +1, 0
    assert scale_report._head_claims(scale_report.head_rows(rows), ["1%", "10/class"], "") == [
        "| 3-layer head − 2-layer head, each from its layer chosen on validation (1%) ≥ 0 | deeper is better, most "
        "so with few labels (ImageNet) | layer 1 − layer 2: 0.5 ± 0.7 (n=2) | holds (within the seed spread) |"]
    assert scale_report._paired_verdict([1.0, 2.0], True) == "holds"
    assert scale_report._paired_verdict([-1.0, 0.5], False) == "**does not hold** (within the seed spread)"


def test_selective_kernels_pretrain_their_own_encoder_and_stay_out_of_the_size_table(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size", "selective-kernels", "--widths", "0.25")
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
    table = scale_report.selective_kernels_table(rows, cells, ["1%"]).splitlines()
    assert table[0] == ("Width 0.25: 1.04 M encoder parameters with Selective Kernels (kNN 70.0 after pretraining), "
                        "0.70 M without (kNN 70.0).")
    assert table[4].startswith("| 0.25 | 1% | fine-tuned |") and table[4].endswith("| 5.0 ± 0.0 (n=2) |")
    assert table[5].startswith("| 0.25 | 1% | supervised |") and table[5].endswith("| 1.0 ± 0.0 (n=2) |")
    assert ("| Selective Kernels − plain encoder, fine-tuned (1%) > 0 at every width | +6.6 at 1 %, +3.7 at 10 % "
            "(ResNet-50, ImageNet) | width 0.25: 5.0 ± 0.0 (n=2) | holds |") in text


def test_a_deeper_encoder_gets_its_own_runs_and_recipes_and_stays_out_of_the_size_table(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size", "encoder-depth", "--widths", "0.25", "--encoder-depths", "18", "50")
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
    assert "| **sgd-0.03** |" not in scale_report.recipe_table(lifted)  # ResNet-18's choices only
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
    rows = _study(tmp_path, "--parts", "size", "encoder-depth", "--widths", "0.25", "--head-width", "0.5",
                  "--encoder-depths", "50")
    text, cells, widths, _ = scale_report.report(rows)
    assert widths == [0.25] and {w for w, _ in cells} == {0.25}
    section = text[text.index("Encoder depth"):].splitlines()
    assert [line.split(" | ")[0] for line in section[4:6]] == ["| ResNet-50 width 0.5 (5.89 M)"] * 2


def test_selective_kernels_hold_only_where_every_width_gains():
    def run(width: float, seed: int, test: float) -> dict:
        return {"part": "selective-kernels", "method": "fine-tuned", "width": width, "labels": "1%", "seed": seed,
                "test_top1": test, "sk_ratio": 0.0625}

    cells = {(0.25, "1%"): _cell({}, {0: 80.0, 1: 81.0}), (0.5, "1%"): _cell({}, {0: 82.0, 1: 82.0})}
    rows = [run(0.25, 0, 81.0), run(0.25, 1, 82.0), run(0.5, 0, 81.0), run(0.5, 1, 82.5)]
    # width 0.5: -1 and +0.5, a mean below zero within its spread
    assert scale_report._selective_kernels_claims(rows, cells, ["1%"]) == [
        "| Selective Kernels − plain encoder, fine-tuned (1%) > 0 at every width | +6.6 at 1 %, +3.7 at 10 % "
        "(ResNet-50, ImageNet) | width 0.25: 1.0 ± 0.0 (n=2), width 0.5: -0.2 ± 1.1 (n=2) | **does not hold** "
        "(within the seed spread at a width) |"]
    assert scale_report._selective_kernels_claims(rows[:2], cells, ["1%"])[0].endswith(
        "| width 0.25: 1.0 ± 0.0 (n=2) | holds |")


def test_pretraining_seeds_fine_tune_each_seed_from_its_own_pretraining(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size", "pretraining-seeds")
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
    _, cells = scale_report.size_table(rows, [0.25, 1.0], ["1%"])
    assert cells[(0.25, "1%")]["fine-tuned"] == {0: 81, 1: 82, 2: 83}  # the shared pretraining's runs only
    replicated = scale_report.pretraining_seed_cells(rows, cells)
    assert replicated[(0.25, "1%")]["fine-tuned"] == {0: 81, 1: 80, 2: 81}
    assert replicated[(1.0, "1%")]["gain"] == [4, 6, 6]
    claims = scale_report.claim(rows, cells, [0.25, 1.0], ["1%"])
    assert ("| fine-tuned − supervised grows with width (1%; widths 0.25, 1; paired by seed; a pretraining per "
            "seed) | grows | -0.3 (n=3) → +5.3 (n=3) | holds |") in claims
    # 84.3 - 80.7 against 79 - 81; the shared pretraining's own spread row stays as it was (+1.0 vs -2.0)
    assert any(c.endswith("(1 %; a pretraining per seed) | ~17 vs ~4 points (ImageNet) | +3.7 vs -2.0 (fine-tuned "
                          "paired by seed: 3.7 ± 2.3 (n=3)) | holds |") for c in claims)
    assert any(c.endswith("(1 %) | ~17 vs ~4 points (ImageNet) | +1.0 vs -2.0 (fine-tuned paired by seed: 1.0 ± 0.0 "
                          "(n=3)) | holds |") for c in claims)
    table = scale_report.pretraining_seed_table(rows, replicated)
    assert "width 0.25: 75.0 (seed 0), 76.0 (seed 1), 77.0 (seed 2)" in table  # not the 4-layer head's pretraining
    assert "| 1 | 1% | 79.0 ± 1.0 (n=3) | 83.0 ± 1.0 (n=3) | 84.3 ± 2.1 (n=3) | 5.3 ± 1.2 (n=3) |" in table
    # width 1's seed 1 pretraining worse: widths 1 − 0.25 fine-tuned by seed 1, -1, 5, a mean within one sd of zero
    rows = [dict(r, test_top1=79) if r.get("run") == "ft-w1.0-pre1-s1" else r for r in rows]
    claims = scale_report.claim(rows, cells, [0.25, 1.0], ["1%"])
    assert any(c.endswith("| +1.7 vs -2.0 (fine-tuned paired by seed: 1.7 ± 3.1 (n=3)) | holds (the fine-tuned "
                          "spread within the seed spread) |") for c in claims)


def test_selective_kernels_can_be_pretrained_once_per_seed_too(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size", "pretraining-seeds", "--replicate", "plain", "selective-kernels",
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
    _, cells = scale_report.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    replicated = scale_report.pretraining_seed_cells(rows, cells)
    plain = [r for r in rows if r["part"] == "pretraining-seeds" and not r["memory"] and not r.get("sk_ratio")]
    assert replicated[(0.25, "1%")]["fine-tuned"][1] == next(r["test_top1"] for r in plain
                                                             if r["width"] == 0.25 and r["labels"] == "1%")
    assert set(scale_report.pretraining_seed_variant_gains(rows, replicated, "memory")) == {(0.25, "10/class"),
                                                                                          (0.25, "1%")}


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
    sk = scale_report.pretraining_seed_variant_gains(rows, replicated, "selective-kernels")
    # seed 1 from its own pretraining (80), not the shared pretraining's seed-1 run (99)
    assert sk[(0.25, "1%")]["variant"] == {0: 82.0, 1: 80.0, 2: 81.0}
    assert scale_report.pretraining_seed_variant_gains(rows, replicated, "memory") == {}
    assert sk[(0.25, "1%")]["gain"] == [1.0, -2.0, 1.0]
    table = scale_report.pretraining_seed_table(rows, replicated)
    assert "(kNN top-1 after each: width 0.25: 77.0 (seed 0), 78.0 (seed 1))" in table
    assert "| 0.25 | 1% | 81.0 ± 1.0 (n=3) | 81.0 ± 1.0 (n=3) | 0.0 ± 1.7 (n=3) |" in table


def test_distillation_with_labels_uses_the_distill_parts_teachers_and_is_paired_with_their_students(fake, tmp_path):
    rows = {r["run"]: r for r in _study(tmp_path, "--parts", "size", "distill", "distill-labels", "--widths", "0.25",
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
    table = scale_report.distill_labels_table(list(rows.values()), ["10/class", "1%"])
    assert "| 0.25 | 1% | 2 | 0.25 |" in table and table.count("| 0.0 ± 0.0 (n=2) |") == 2
    other = "distill-finetune-w0.25-h3-layer1-1pct-sgd-0.01-s1-e2"
    rows[other] = dict(rows[other], teacher_test_top1=0.0)
    table = scale_report.distill_labels_table(list(rows.values()), ["10/class", "1%"])
    assert table.splitlines()[3].endswith("| 0.0 ± 0.0 (n=1) |")  # 1 %: seed 0 only
    assert table.splitlines()[2].endswith("| 0.0 ± 0.0 (n=2) |")  # 10/class comes first, as in every table


def test_a_memory_momentum_other_than_the_base_configs_gets_its_own_runs_and_table_rows(fake, tmp_path):
    _study(tmp_path, "--parts", "size", "memory")
    rows = _study(tmp_path, "--parts", "memory", "--memory-momentum", "0.99")
    config = fake.configs["pretrain-w0.25-h3-mem4096-m0.99-s0"]
    assert (config.pretrain.memory_size, config.pretrain.memory_momentum) == (4096, 0.99)
    tuned = [r for r in rows if r.get("memory_momentum") == 0.99 and r["method"] == "fine-tuned"]
    assert len(tuned) == 4 and {r["part"] for r in tuned} == {"memory"}
    assert all(Path(fake.configs[r["run"]].finetune.pretrained).name == "pretrain-w0.25-h3-mem4096-m0.99-s0"
               for r in tuned)
    _, cells = scale_report.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    table = scale_report.memory_table(rows, cells, ["10/class", "1%"], 0.999)
    assert [line.split(" | ")[2] for line in table.splitlines()[2:]] == ["0.99", "0.999", "0.99", "0.999"]
    # the pretraining-seeds part's memory variant is the base momentum's: seed 0 must not be the 0.99 run
    memory_seed0 = {r["labels"]: r["test_top1"] for r in rows if r["part"] == "memory" and r["seed"] == 0
                    and "memory_momentum" not in r}
    replicated = {(0.25, labels): {"fine-tuned": {0: 1.0, 1: 1.0}} for labels in memory_seed0}
    rows.append({**next(r for r in rows if r["part"] == "memory" and "memory_momentum" not in r and r["seed"] == 0
                        and r["labels"] == "1%"), "run": "replicated", "part": "pretraining-seeds", "seed": 1,
                 "pretrain_seed": 1})
    rows = [dict(r, test_top1=-1.0) if r.get("memory_momentum") else r for r in rows]  # tell the two apart
    gains = scale_report.pretraining_seed_variant_gains(rows, replicated, "memory")
    assert gains[(0.25, "1%")]["variant"][0] == memory_seed0["1%"]


def test_head_depths_can_be_pretrained_once_per_seed_too(fake, tmp_path):
    rows = _study(tmp_path, "--parts", "size", "head", "pretraining-seeds", "--replicate", "plain", "head")
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
    _, cells = scale_report.size_table(marked, [0.25, 0.5], ["10/class", "1%"])
    replicated = scale_report.pretraining_seed_cells(marked, cells)
    assert replicated[(0.25, "1%")]["fine-tuned"][1] == 31.0
    per_seed = scale_report.head_rows(rows, per_seed=True)
    assert {(r["seed"], r.get("pretrain_seed", 0)) for r in per_seed} == {(0, 0), (1, 1)}
    assert len(per_seed) == 2 * len(own)
    # a longer pretraining of seed 1 (--replicate pretrain-epochs) is not one of the head depths
    longer = dict(own[0], run="finetune-w0.25-h3-e5-pre1-layer1-1pct-sgd-0.01-s1", head_layers=3, head_layer=1,
                  pretrain_epochs=5)
    assert scale_report.head_rows(rows + [longer], per_seed=True) == per_seed


def test_head_claims_with_a_pretraining_per_seed_pair_each_seed_with_its_own_pretrainings():
    """Seed 1 from the shared pretraining favours layer 1, from its own pretraining layer 0: the per-seed claims
    use the own-pretraining runs (seed 0 the head part's), the shared claims the shared runs."""
    def run(part: str, heads: int, layer: int, seed: int, test: float, **extra) -> dict:
        return {"part": part, "method": "fine-tuned", "width": 0.25, "recipe": "sgd-0.01", "memory": 0,
                "head_layers": heads, "labels": "10/class", "head_layer": layer, "seed": seed, "val_top1": 70.0,
                "test_top1": test, **extra}

    rows = [run("size" if j == 1 else "head", 3, j, s, 70.0 + 2 * (j == 1)) for j in range(4) for s in (0, 1)]
    assert scale_report.head_rows(rows, per_seed=True) == []  # no pretraining-seeds runs at all
    # the size claims' own runs (3-layer head, layer 1) alone are no head replication
    rows.append(run("pretraining-seeds", 3, 1, 1, 60.0, pretrain_seed=1))
    assert scale_report.head_rows(rows, per_seed=True) == []
    rows += [run("pretraining-seeds", 3, j, 1, 65.0, pretrain_seed=1) for j in (0, 2, 3)]
    shared = scale_report._head_claims(scale_report.head_rows(rows), ["10/class"], "")
    assert shared[0].startswith("| fine-tuning from head layer 1 − layer 0, 3-layer head (10 per class) ≥ 0 |")
    assert "| 2.0 ± 0.0 (n=2) | holds |" in shared[0]
    per_seed = scale_report._head_claims(scale_report.head_rows(rows, per_seed=True), ["10/class"],
                                         scale_report.PRETRAINING_PER_SEED)
    # seed 0: 72 − 70 (head part); seed 1: 60 − 65 (its own pretraining)
    assert per_seed[0].startswith("| fine-tuning from head layer 1 − layer 0, 3-layer head (10 per class; a "
                                  "pretraining per seed) ≥ 0 |")
    assert "| -1.5 ± 4.9 (n=2) | **does not hold** (within the seed spread) |" in per_seed[0]
    text, *_ = scale_report.report(rows)
    assert "Head depth, a pretraining per seed" in text


def test_the_memory_table_shows_each_pretrainings_knn_and_another_size_stays_out_of_the_per_seed_variant(fake,
                                                                                                        tmp_path):
    _study(tmp_path, "--parts", "size", "memory", "pretraining-seeds", "--replicate", "plain", "memory")
    rows = _study(tmp_path, "--parts", "memory", "--memory-size", "1024")
    knn = {"pretrain-w0.25-h3-s0": 75.0, "pretrain-w0.25-h3-mem4096-s0": 72.0, "pretrain-w0.25-h3-mem1024-s0": 74.0}
    rows = [dict(r, knn_val=knn.get(r["run"], r.get("knn_val"))) for r in rows]
    _, cells = scale_report.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    table = scale_report.memory_table(rows, cells, ["10/class", "1%"], 0.999).splitlines()
    assert [line.split(" | ")[1:4] for line in table[2:4]] == [["1024", "0.999", "74.0 / 75.0"],
                                                               ["4096", "0.999", "72.0 / 75.0"]]
    # seed 0 of the per-seed memory variant is the 4096 memory's run, which was replicated, not the 1024 one's
    rows = [dict(r, test_top1=-1.0) if r["memory"] == 1024 else r for r in rows]
    replicated = scale_report.pretraining_seed_cells(rows, cells)
    gains = scale_report.pretraining_seed_variant_gains(rows, replicated, "memory")
    seed0 = next(r["test_top1"] for r in rows if r["part"] == "memory" and r["memory"] == 4096 and r["seed"] == 0
                 and r["labels"] == "1%")
    assert gains[(0.25, "1%")]["variant"][0] == seed0
    assert "width 0.25: " in scale_report.pretraining_seed_table(rows, replicated)


def test_a_longer_pretraining_gets_its_own_runs_the_recorded_recipes_and_stays_out_of_the_size_table(fake, tmp_path):
    _study(tmp_path, "--parts", "size")
    before = len(fake.calls)
    rows = _study(tmp_path, "--parts", "pretrain-epochs", "--long-pretrain-epochs", "5")
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
    _, cells = scale_report.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    size_run = next(r for r in rows if r["run"] == "finetune-w0.25-h3-layer1-1pct-sgd-0.01-s0")
    assert cells[(0.25, "1%")]["fine-tuned"][0] == size_run["test_top1"]
    by_length = scale_report.pretraining_length_cells(rows, cells)
    assert list(by_length) == [5]
    cell = by_length[5][(0.25, "1%")]
    assert cell["fine-tuned"][0] == size_run["test_top1"] + 10
    assert cell["gain"] == scale_report.paired(cell["fine-tuned"], cells[(0.25, "1%")]["supervised"])
    table = scale_report.pretraining_length_table(rows, by_length).splitlines()
    assert table[0].startswith("| width | labels | epochs | kNN, 2 epochs / longer |")
    assert " | 10.0 ± 0.0 (n=2) | " in table[3]  # longer − 2 epochs, paired by seed
    claims = scale_report.claim(rows, cells, [0.25, 0.5], ["10/class", "1%"])
    assert any("(1%; widths 0.25, 0.5; paired by seed; pretrained 5 epochs)" in c for c in claims)


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
    table = scale_report.selective_kernels_table(rows, cells, ["1%"])
    assert "Selective Kernels (kNN 77.0 after pretraining), 0.70 M without (kNN 75.0)." in table
    temperatures, _ = scale_report.temperature_table(rows, 0.2)
    assert [line.split(" | ")[:2] for line in temperatures.splitlines()[2:]] == [["| 0.1", "74.0"], ["| 0.2", "75.0"]]


def test_a_longer_pretraining_per_seed_pairs_each_seed_with_its_own_pretrainings_and_leaves_the_others(fake, tmp_path):
    _study(tmp_path, "--parts", "size", "pretraining-seeds", "pretrain-epochs", "--long-pretrain-epochs", "5")
    before = len(fake.calls)
    rows = _study(tmp_path, "--parts", "pretraining-seeds", "--replicate", "pretrain-epochs",
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
    _, cells = scale_report.size_table(rows, [0.25, 0.5], ["10/class", "1%"])
    replicated = scale_report.pretraining_seed_cells(rows, cells)
    two_epochs = next(r for r in rows if r["part"] == "pretraining-seeds" and r["pretrain_epochs"] == 2
                      and r["width"] == 0.25 and r["labels"] == "1%")
    assert replicated[(0.25, "1%")]["fine-tuned"][1] == two_epochs["test_top1"]
    shared = scale_report.pretraining_length_cells(rows, cells)[5][(0.25, "1%")]
    assert set(shared["fine-tuned"]) == {0, 1} and all(  # seed 1 there fine-tuned seed 0's longer pretraining
        r["test_top1"] == shared["fine-tuned"][r["seed"]] for r in rows
        if r["part"] == "pretrain-epochs" and r["width"] == 0.25 and r["labels"] == "1%")
    per_seed = scale_report.pretraining_length_cells(rows, replicated, per_seed=True)
    cell = per_seed[5][(0.25, "1%")]
    assert cell["fine-tuned"] == {0: shared["fine-tuned"][0], 1: next(
        r["test_top1"] for r in longer if r["width"] == 0.25 and r["labels"] == "1%") + 10}
    assert cell["shorter"] == replicated[(0.25, "1%")]["fine-tuned"]
    # a seed with no longer pretraining yet (seed 2 here) stays out of the shorter column too
    with_seed_2 = {key: dict(value, **{"fine-tuned": {**value["fine-tuned"], 2: 99.0}})
                   for key, value in replicated.items()}
    partial = scale_report.pretraining_length_cells(rows, with_seed_2, per_seed=True)[5][(0.25, "1%")]
    assert partial["shorter"] == replicated[(0.25, "1%")]["fine-tuned"]
    table = scale_report.pretraining_length_table(rows, per_seed, per_seed=True)
    assert table.startswith("kNN top-1 on validation after each pretraining: width 0.25: 2 epochs 70.0 (seed 0), "
                            "70.0 (seed 1); 5 epochs 70.0 (seed 0), 70.0 (seed 1); width 0.5:")
    assert "| 0.25 | 1% | 5 | 70.0 ± 0.0 (n=2) / 70.0 ± 0.0 (n=2) |" in table  # each length's mean over the seeds
    claims = scale_report.claim(rows, cells, [0.25, 0.5], ["10/class", "1%"])
    assert any("(1%; widths 0.25, 0.5; paired by seed; pretrained 5 epochs; a pretraining per seed)" in c
               for c in claims)
    assert "A longer pretraining per seed" in scale_report.report(rows)[0]
