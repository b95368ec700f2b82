import pytest
import torch

from simclrv2.checkpoint import (
    MetricsLog,
    check_run_dir,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    save_checkpoint,
)
from simclrv2.errors import SimCLRv2Error


def test_existing_run_is_not_touched_without_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, resume=False, overwrite=False)
    (run / "metrics.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(SimCLRv2Error, match="--resume .* --overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)
    assert (run / "metrics.jsonl").read_text() == '{"a": 1}\n'


def test_checking_a_run_directory_creates_and_removes_nothing(tmp_path):
    check_run_dir(tmp_path / "new", resume=False, overwrite=False)
    assert not (tmp_path / "new").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text("{}")
    with pytest.raises(SimCLRv2Error, match="already holds a run \\(result.json\\)"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=False, overwrite=True)
    assert (run / "result.json").read_text() == "{}"
    with pytest.raises(SimCLRv2Error, match="is a file"):
        check_run_dir(run / "result.json", resume=False, overwrite=False)


def test_overwrite_removes_only_run_files(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "notes.txt").write_text("mine")
    prepare_run_dir(run, resume=False, overwrite=True)
    assert not (run / "checkpoints").exists()
    assert (run / "notes.txt").read_text() == "mine"


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, stage="pretrain", model={"w": torch.ones(2)}, step=3)
    payload = load_checkpoint(path)
    assert payload["step"] == 3 and torch.equal(payload["model"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left


def test_run_directory_resolves_to_final_then_last(tmp_path):
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", stage="pretrain", step=1)
    assert load_checkpoint(tmp_path)["step"] == 1
    save_checkpoint(tmp_path / "checkpoints" / "final.pt", stage="pretrain", step=2)
    assert load_checkpoint(tmp_path)["step"] == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_or_foreign_checkpoints_give_clear_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"some": "dict"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(SimCLRv2Error, match="checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind, missing", [("simclr", "image_size"), ("classifier", "classes")])
def test_a_network_checkpoint_of_an_older_version_says_to_rerun_its_stage(tmp_path, kind, missing):
    fields = {"architecture": {}, "image_size": 28, "head_layer": 1, "num_classes": 2, "classes": ["a", "b"]}
    del fields[missing]
    save_checkpoint(tmp_path / "final.pt", stage="finetune", kind=kind, **fields)
    with pytest.raises(SimCLRv2Error, match=f"older simclrv2 and records no {missing}; rerun its finetune stage"):
        load_checkpoint(tmp_path / "final.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SimCLRv2Error, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_metrics_log_skips_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(step=1, loss=2.0)
    with path.open("a") as f:
        f.write('{"step": 2, "lo')
    records = read_metrics(path)
    assert len(records) == 1 and records[0]["loss"] == 2.0
