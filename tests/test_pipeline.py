import dataclasses
import json

import pytest

import simclrv2.stages.pipeline as pipeline_module
from simclrv2.errors import SimCLRv2Error
from simclrv2.results import PipelineSummary, choose_best
from simclrv2.stages.pipeline import pipeline, plan, slug


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_fashion):
    """The whole pipeline on the tiny data, recording every split the dataset reader opens."""
    from conftest import quick_config_values, record_split_reads

    patch = pytest.MonkeyPatch()
    reads = record_split_reads(patch)
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    config = quick_config_values(tiny_fashion, **{"pipeline.label_fractions": "10%", "pipeline.head_layers": "0,1",
                                                  "run.knn_every": 0})
    summary = pipeline(config, run_dir)
    patch.undo()
    return run_dir, config, summary, reads


def test_plan_names_one_sub_directory_per_stage(quick_config, tmp_path):
    names = [s.name for s in plan(quick_config(), tmp_path)]
    assert names == ["pretrain", "finetune-1pct-layer0", "finetune-1pct-layer1", "supervised-1pct", "linear-1pct",
                     "distill-1pct", "finetune-10pct-layer0", "finetune-10pct-layer1", "supervised-10pct",
                     "linear-10pct", "distill-10pct"]
    assert slug("60/class") == "60-per-class"


def test_missing_data_is_reported_before_the_run_directory_is_made(quick_config, tmp_path):
    with pytest.raises(SimCLRv2Error, match="does not exist"):
        pipeline(quick_config(**{"data.data_dir": tmp_path / "missing"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pipeline_runs_every_stage_and_writes_the_table(pipeline_run):
    run_dir, _, summary, _ = pipeline_run
    methods = {r.method for r in summary.rows}
    assert methods == {"fine-tuned (head layer 0)", "fine-tuned (head layer 1)", "supervised only", "linear eval",
                       "distilled student"}
    assert all(r.val_top1 is not None and r.test_top1 is not None for r in summary.rows)
    assert PipelineSummary.read(run_dir) == summary
    assert (run_dir / "embeddings.pt").is_file()
    page = (run_dir / "report" / "index.html").read_text()
    assert summary.best.method in page and "augmentations.png" in page
    table = summary.format_table()
    assert "distilled student" in table and "10%" in table


def test_the_best_row_is_chosen_on_validation_never_on_test(pipeline_run):
    _, _, summary, _ = pipeline_run
    assert summary.best == choose_best(summary.rows)
    assert summary.best.val_top1 == max(r.val_top1 for r in summary.rows)
    rows = [dataclasses.replace(r, test_top1=1.0 - (r.val_top1 or 0)) for r in summary.rows]  # test disagrees
    assert choose_best(rows).run == summary.best.run


def test_every_stage_of_the_pipeline_reads_the_test_split_only_in_its_final_evaluation(pipeline_run):
    """Recorded at the reader, whoever calls it: pretraining, two fine-tunings, the supervised baseline, the
    linear evaluation and the student each read it once, inside their final evaluation; the pipeline's own reads
    (the embeddings' validation images) are sealed too."""
    from conftest import assert_test_split_read_only_in_final_evaluations

    _, _, _, reads = pipeline_run
    assert_test_split_read_only_in_final_evaluations(reads, evaluations=6)


def test_rerun_reuses_every_finished_stage(pipeline_run, monkeypatch):
    run_dir, config, summary, _ = pipeline_run
    ran = []
    for name in ("pretrain", "finetune", "supervised", "evaluate", "distill"):
        monkeypatch.setattr(pipeline_module, name, lambda *a, _n=name, **k: ran.append(_n))
    again = pipeline(config, run_dir, resume=True)
    assert ran == []
    assert again.rows == summary.rows


def test_a_changed_stage_config_reruns_that_stage_and_what_depends_on_it(pipeline_run, tmp_path):
    import dataclasses
    import shutil

    run_dir, config, _, _ = pipeline_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    changed = dataclasses.replace(config, distill=dataclasses.replace(config.distill, alpha=0.5))
    before = json.loads((copy / "pipeline.json").read_text())["steps"]
    pipeline(changed, copy, resume=True)
    after = json.loads((copy / "pipeline.json").read_text())["steps"]
    differs = {name for name in after if after[name]["fingerprint"] != before[name]["fingerprint"]}
    assert differs == {"distill-10pct"}


def test_a_student_from_pretrained_weights_starts_from_the_pipelines_own_pretraining(quick_config, tmp_path):
    import dataclasses

    config = quick_config()
    config = dataclasses.replace(config, distill=dataclasses.replace(config.distill, student_init="pretrained"))
    steps = {s.name: s for s in plan(config, tmp_path / "run")}
    distill_step = steps["distill-1pct"]
    assert distill_step.config.distill.student_pretrained == str(tmp_path / "run" / "pretrain")
    assert "pretrain" in distill_step.upstream  # re-pretraining re-runs the distillation
    moved = {s.name: s for s in plan(config, tmp_path / "elsewhere")}["distill-1pct"]
    upstream = {"pretrain": "p", "finetune-1pct-layer1": "f"}
    assert pipeline_module.fingerprint(moved, upstream) == pipeline_module.fingerprint(distill_step, upstream)
    assert pipeline_module.fingerprint(distill_step, {**upstream, "pretrain": "q"}) != pipeline_module.fingerprint(
        distill_step, upstream)

    own = dataclasses.replace(config, distill=dataclasses.replace(config.distill, student_init="pretrained",
                                                                  student_pretrained=str(tmp_path / "mine")))
    kept = {s.name: s for s in plan(own, tmp_path / "run")}["distill-1pct"]
    assert kept.config.distill.student_pretrained == str(tmp_path / "mine") and "pretrain" not in kept.upstream
