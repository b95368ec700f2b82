import json

import pytest
import torch

import simclrv2.stages.pretrain as pretrain_module
from simclrv2.checkpoint import load_checkpoint, read_metrics
from simclrv2.errors import Interrupted, SimCLRv2Error
from simclrv2.stages.pretrain import pretrain


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_fashion):
    from conftest import quick_config_values

    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    result = pretrain(quick_config_values(tiny_fashion), run_dir)
    return run_dir, result


def test_pretraining_writes_config_metrics_and_a_final_checkpoint(finished_run):
    run_dir, result = finished_run
    assert (run_dir / "config.toml").is_file()
    payload = load_checkpoint(run_dir)
    assert payload["stage"] == "pretrain" and payload["kind"] == "simclr"
    assert payload["architecture"]["cifar_stem"] is True and payload["architecture"]["in_channels"] == 1
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["event"] == "train"]
    knn = [r for r in records if r["event"] == "knn"]
    assert train and all(r["loss"] > 0 and r["lr"] >= 0 and r["pairs_per_s"] > 0 for r in train)
    assert [r["epoch"] for r in knn] == [0, 1, 2]  # random init, every epoch, final
    assert result.knn_top1 == knn[-1]["knn_top1"] and result.knn_top1_at_init == knn[0]["knn_top1"]


def test_learning_rate_follows_warmup_then_cosine_per_step(finished_run):
    run_dir, _ = finished_run
    lrs = [r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]
    peak = max(lrs)
    assert lrs.index(peak) <= 1 and lrs[-1] < peak  # 5 % warmup of 12 steps is one step; then decay


def test_pretraining_learns_something_the_knn_monitor_sees(finished_run):
    _, result = finished_run
    assert result.knn_top1 > 0.5  # the tiny classes are visible; a broken pipeline stays near 0.1


def test_existing_run_directory_is_never_overwritten_silently(finished_run, quick_config):
    run_dir, _ = finished_run
    before = (run_dir / "checkpoints" / "final.pt").stat().st_mtime_ns
    with pytest.raises(SimCLRv2Error, match="--resume"):
        pretrain(quick_config(), run_dir)
    assert (run_dir / "checkpoints" / "final.pt").stat().st_mtime_ns == before


def test_resuming_a_finished_run_reuses_it(finished_run, quick_config):
    run_dir, result = finished_run
    again = pretrain(quick_config(), run_dir, resume=True)
    assert again.knn_top1 == result.knn_top1


def test_resuming_with_a_different_config_is_refused(finished_run, quick_config):
    run_dir, _ = finished_run
    with pytest.raises(SimCLRv2Error, match="pretrain.temperature"):
        pretrain(quick_config(**{"pretrain.temperature": 0.2}), run_dir, resume=True)


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path, quick_config):
    with pytest.raises(SimCLRv2Error, match="larger than the 400 training images"):
        pretrain(quick_config(**{"pretrain.batch_size": 512}), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing that the next try must --overwrite


def test_overwrite_with_bad_input_keeps_the_existing_run(finished_run, quick_config, tmp_path):
    run_dir, _ = finished_run
    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    with pytest.raises(SimCLRv2Error, match="does not exist"):
        pretrain(quick_config(**{"data.data_dir": tmp_path / "missing"}), run_dir, overwrite=True)
    with pytest.raises(SimCLRv2Error, match="larger than"):
        pretrain(quick_config(**{"pretrain.batch_size": 512}), run_dir, overwrite=True)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files


def test_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, quick_config, monkeypatch):
    config = quick_config(**{"run.knn_every": 0, "pretrain.epochs": 2})
    straight = pretrain(config, tmp_path / "straight")

    real_views, calls = pretrain_module.simclr_views, {"n": 0}

    def interrupt_at_step_8(*args, **kwargs):  # before the 9th forward, as Ctrl-C between steps would
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_views(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "simclr_views", interrupt_at_step_8)
    with pytest.raises(Interrupted, match="--resume"):
        pretrain(config, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 8
    monkeypatch.setattr(pretrain_module, "simclr_views", real_views)
    pretrain(config, tmp_path / "resumed", resume=True)

    a = load_checkpoint(straight.checkpoint)["model"]
    b = load_checkpoint(tmp_path / "resumed")["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_golden_loss_curve(tmp_path, quick_config):
    """The first losses of a tiny seeded fp32 run; a silent change in the recipe moves them."""
    from pathlib import Path

    golden = Path(__file__).parent / "golden" / "pretrain_losses.json"
    config = quick_config(**{"run.knn_every": 0, "run.log_every": 1, "pretrain.epochs": 1})
    pretrain(config, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    expected = json.loads(golden.read_text())["losses"]
    assert len(losses) == len(expected)
    assert losses == pytest.approx(expected, rel=2e-3, abs=2e-3)
