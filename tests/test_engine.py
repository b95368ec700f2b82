"""The training engine on its own: step budgets, warnings for stages that cannot train, signals, log clean-up."""

from __future__ import annotations

import logging
import signal

import pytest
import torch
from torch import nn

from simclrv2.checkpoint import load_checkpoint, read_metrics
from simclrv2.config import load_config
from simclrv2.errors import Interrupted, SimCLRv2Error
from simclrv2.stages import engine
from simclrv2.stages import session as session_module
from simclrv2.stages.engine import MIN_SENSIBLE_STEPS, Budget, Task, fit
from simclrv2.stages.resume import config_differences
from simclrv2.stages.session import Training, open_session
from simclrv2.stages.signals import StopSignals


def test_a_budget_of_100_labels_does_not_collapse_to_one_step_per_epoch():
    budget = Budget.plan("finetune", 100, 64, epochs=60, min_steps=600)
    assert budget.batch_size == 64 and budget.steps_per_epoch == 1
    assert budget.total_steps == 600 and budget.epochs == 600  # epochs follow from the minimum step count


def test_epochs_win_when_they_give_more_steps_than_the_minimum():
    budget = Budget.plan("finetune", 6000, 64, epochs=30, min_steps=600)
    assert budget.steps_per_epoch == 93 and budget.epochs == 30 and budget.total_steps == 2790


def test_the_batch_is_capped_at_the_data_for_classifiers_but_refused_for_pretraining():
    assert Budget.plan("finetune", 40, 64, epochs=1, min_steps=200).batch_size == 40
    with pytest.raises(SimCLRv2Error, match="larger than the 40 training images"):
        Budget.plan("pretrain", 40, 64, epochs=1, exact_batch=True)


def test_warmup_is_a_fraction_of_the_whole_budget():
    assert Budget.plan("pretrain", 1000, 100, epochs=20, warmup_fraction=0.05, exact_batch=True).warmup_steps == 10


def test_a_stage_with_too_few_steps_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        Budget.plan("supervised", 100, 64, epochs=20, min_steps=0)
    assert "supervised takes only 20 optimiser steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        Budget.plan("supervised", 100, 64, epochs=20, min_steps=MIN_SENSIBLE_STEPS)
    assert "optimiser steps" not in caplog.text


def _session(tmp_path, **overrides):
    values = {"run.progress": "false", "run.log_every": "1", **overrides}
    config = load_config(None, values)
    session = open_session("toy", config, tmp_path / "run", resume=False, overwrite=False, identity_sections=())
    session.start()
    return session


def test_a_session_flushes_denormals_so_a_student_at_temperature_1_does_not_crawl(tmp_path):
    torch.set_flush_denormal(False)
    try:
        assert torch.tensor([1e-323], dtype=torch.float64).item() != 0.0
        _session(tmp_path)
        assert torch.tensor([1e-323], dtype=torch.float64).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_bf16_math_on_a_torch_without_the_setting_is_a_clear_error_and_other_precisions_go_on(monkeypatch):
    from types import SimpleNamespace

    from simclrv2.runtime import set_fp32_math

    monkeypatch.setattr(torch.backends, "mkldnn", SimpleNamespace())
    set_fp32_math("fp32")  # nothing to switch off
    with pytest.raises(SimCLRv2Error, match="bf16-math' needs a torch with"):
        set_fp32_math("bf16-math")


def test_fp32_is_exact_on_cuda_too_and_tf32_is_an_opt_in_for_cuda_only(tmp_path):
    """PyTorch's default runs cuDNN's fp32 convolutions in TF32; a session in fp32 turns that off (set here on any
    build: the flags exist without a GPU), tf32 turns it on for cuBLAS and cuDNN, and tf32 off CUDA is refused.
    torch's own readers of the flags keep working (they refuse flags set two ways)."""
    from simclrv2.runtime import set_fp32_math

    def tf32() -> tuple[bool, bool]:
        with torch.backends.cudnn.flags(enabled=False):  # reads and restores them, as torch's ONNX export does
            pass
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    try:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
        _session(tmp_path / "a", **{"run.precision": "fp32"})
        assert tf32() == (False, False)
        set_fp32_math("tf32")
        assert tf32() == (True, True)
        set_fp32_math("bf16")
        assert tf32() == (False, False)
    finally:
        set_fp32_math("fp32")
    with pytest.raises(SimCLRv2Error, match="'tf32' is a CUDA mode .* on cpu use 'bf16', 'fp32' or 'bf16-math'"):
        _session(tmp_path / "b", **{"run.device": "cpu", "run.precision": "tf32"})


def _toy_task(losses: list[float], budget: Budget) -> Task:
    """A one-parameter model whose loss is scripted: the engine's bookkeeping, not learning, is under test."""
    model = nn.Linear(1, 1)
    training = Training(model, model, torch.optim.SGD(model.parameters(), lr=0.0), peak_lr=0.1)
    calls = iter(losses)

    class Scripted(Task):
        def inputs(self, indices, generator):
            return indices

        def loss(self, inputs):
            return model.weight.sum() * 0 + next(calls)

    return Scripted(training, budget, {"kind": "toy"}, eval_every=0)


def test_a_loss_that_ends_above_its_start_is_reported(tmp_path, caplog):
    budget = Budget.plan("toy", 8, 2, epochs=2)
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        result = fit(_toy_task([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0], budget), _session(tmp_path))
    assert result.first_loss == 1.0 and result.last_loss == 2.0
    assert "ended above its start (1.0000 -> 2.0000)" in caplog.text


def test_a_falling_loss_raises_no_warning(tmp_path, caplog):
    budget = Budget.plan("toy", 8, 2, epochs=2)
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        fit(_toy_task([2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3], budget), _session(tmp_path))
    assert "ended above" not in caplog.text


class _FakeClock:
    """Stands in for the engine's ``time``: it moves only when a scripted step says so."""

    now = 0.0

    def perf_counter(self) -> float:
        return self.now

    monotonic = perf_counter


def test_step_timing_gives_each_step_its_data_and_model_time(tmp_path, monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(engine, "time", clock)
    task = _toy_task([1.0] * 8, Budget.plan("toy", 8, 2, epochs=2))
    inputs, loss = task.inputs, task.loss

    def slow_inputs(indices, generator):  # 0.25 s of waiting for data and augmenting it
        clock.now += 0.25
        return inputs(indices, generator)

    def slow_loss(batch):  # 1 s of forward pass
        clock.now += 1.0
        return loss(batch)

    task.inputs, task.loss = slow_inputs, slow_loss
    times = []
    session = _session(tmp_path, **{"run.step_timing": "true", "run.log_every": "2"})
    fit(task, session, on_step=times.append)
    assert [(t.step, t.data_s, t.model_s, t.step_s) for t in times] == [(s, 0.25, 1.0, 1.25) for s in range(1, 9)]
    records = [r for r in read_metrics(session.run_dir / "metrics.jsonl") if r["event"] == "train"]
    assert [(r["step"], r["data_s"], r["model_s"], r["step_s"]) for r in records] == [
        (s, 0.25, 1.0, 1.25) for s in (2, 4, 6, 8)]


def test_without_step_timing_the_records_carry_no_times(tmp_path):
    session = _session(tmp_path)
    fit(_toy_task([1.0] * 4, Budget.plan("toy", 8, 2, epochs=1)), session)
    records = read_metrics(session.run_dir / "metrics.jsonl")
    assert records and not any({"data_s", "model_s", "step_s"} & r.keys() for r in records)


def test_skipped_nonfinite_steps_are_counted_in_the_log(tmp_path):
    budget = Budget.plan("toy", 8, 2, epochs=1)
    session = _session(tmp_path, **{"run.nonfinite": "skip"})
    result = fit(_toy_task([1.0, float("nan"), 1.0, float("inf")], budget), session)
    assert result.skipped_steps == 2 and result.step == 4
    # a window of only skipped steps has no loss to log; the next record carries the count
    assert [r["skipped"] for r in read_metrics(session.run_dir / "metrics.jsonl")] == [0, 1]


def _train_records(run_dir):
    """What a reader of metrics.jsonl compares across runs: everything but the clock."""
    return [{k: v for k, v in r.items() if k not in ("time", "items_per_s")}
            for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]


def test_a_run_interrupted_mid_window_and_resumed_logs_the_uninterrupted_runs_records(tmp_path):
    # 3 epochs of 4 steps, a record every 3 steps and at each epoch's end; step 5 is non-finite and skipped
    losses = [2.0, 1.9, 1.7, 1.6, 1.5, float("nan"), 1.3, 1.2, 1.1, 1.0, 0.95, 0.9]
    options = {"run.nonfinite": "skip", "run.log_every": "3"}
    budget = Budget.plan("toy", 8, 2, epochs=3)
    straight = fit(_toy_task(losses, budget), _session(tmp_path / "straight", **options))

    stop_after = 7  # mid-window: the record at step 6 is written, the one at 8 (steps 7 and 8) is not
    task = _toy_task(losses, budget)
    scripted = task.loss

    def loss(inputs):
        value = scripted(inputs)
        if loss.calls == stop_after - 1:
            signal.raise_signal(signal.SIGTERM)
        loss.calls += 1
        return value

    loss.calls = 0
    task.loss = loss
    with pytest.raises(Interrupted):
        fit(task, _session(tmp_path / "resumed", **options))
    config = load_config(None, {"run.progress": "false", **options})
    session = open_session("toy", config, tmp_path / "resumed" / "run", resume=True, overwrite=False,
                           identity_sections=())
    assert session.start_step == stop_after
    session.start()
    resumed = fit(_toy_task(losses[stop_after:], budget), session)

    expected = _train_records(tmp_path / "straight" / "run")
    assert [r["step"] for r in expected] == [3, 4, 6, 8, 9, 12]
    assert _train_records(tmp_path / "resumed" / "run") == expected
    assert (resumed.first_loss, resumed.last_loss, resumed.skipped_steps) == (
        straight.first_loss, straight.last_loss, straight.skipped_steps)


def test_stop_signals_chain_the_handler_installed_before(monkeypatch):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with StopSignals() as signals:
            signal.raise_signal(signal.SIGUSR1)
            assert signals.received == signal.SIGUSR1
        assert seen == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not signals._handle  # restored on exit
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_a_signal_mid_run_saves_the_finished_step_and_exits_with_the_shells_code(tmp_path, signum, code):
    """128 + the signal number, as a shell reports a process the signal killed: what a scheduler's requeue
    script reads. The step under way when the signal came finishes and is saved; the next does not start."""
    task = _toy_task([1.0] * 8, Budget.plan("toy", 8, 2, epochs=2))
    scripted = task.loss

    def loss(inputs):
        loss.calls += 1
        if loss.calls == 3:
            signal.raise_signal(signum)
        return scripted(inputs)

    loss.calls = 0
    task.loss = loss
    session = _session(tmp_path)
    with pytest.raises(Interrupted, match=f"toy stopped by signal {int(signum)} after step 3.*--resume") as stopped:
        fit(task, session)
    assert stopped.value.exit_code == code
    assert loss.calls == 3 and load_checkpoint(session.checkpoints / "last.pt")["step"] == 3


def test_resume_drops_log_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "toy", "step": 1}\n{"stage": "toy", "step": 2}\n{"stage": "toy", "step": 3}\n'
                    '{"stage": "other", "step": 9}\n{"stage": "toy", "event": "knn"}\n')
    session_module._truncate_metrics(path, "toy", 2)
    assert [r.get("step") for r in read_metrics(path)] == [1, 2, 9, None]


def test_metrics_also_go_to_tensorboard_when_it_is_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    budget = Budget.plan("toy", 8, 2, epochs=1)
    session = _session(tmp_path)
    fit(_toy_task([1.0, 0.5, 0.25, 0.125], budget), session)
    events = EventAccumulator(str(session.run_dir / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("toy/loss")]
    assert losses == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)]


def test_a_resumed_runs_tensorboard_hides_what_the_interrupted_part_wrote_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from simclrv2.tensorboard import TensorBoardSink

    first = TensorBoardSink(tmp_path)
    for step, loss in enumerate([1.0, 0.5, 0.25, 0.125], start=1):
        first.write({"stage": "toy", "step": step, "loss": loss})
    first.close()  # interrupted after step 4; the checkpoint holds step 2
    resumed = TensorBoardSink(tmp_path, resumed_at=2)
    for step, loss in ((3, 0.3), (4, 0.2)):
        resumed.write({"stage": "toy", "step": step, "loss": loss})
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Scalars("toy/loss")
    assert [e.step for e in scalars] == [1, 2, 3, 4]
    assert [e.value for e in scalars] == pytest.approx([1.0, 0.5, 0.3, 0.2])  # 0.25 and 0.125 hidden


def test_a_resumed_session_hands_its_checkpoint_step_to_tensorboard(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(session_module, "tensorboard_sink",
                        lambda log_dir, wanted, resumed_at=None: asked.append(resumed_at))
    session = _session(tmp_path)  # a fresh run
    session.resume, session.state = True, {"step": 7}  # as open_session leaves a run resumed from last.pt
    session.start()
    assert asked == [None, 7]


def test_an_option_added_after_a_run_was_saved_blocks_its_resume_only_when_set_away_from_its_default():
    saved = {"model": {"depth": 18}}
    defaults = {"model": {"depth": 18, "tf_pooling": False}}
    assert config_differences(saved, {"model": {"depth": 18, "tf_pooling": False}}, ("model",), defaults) == []
    assert config_differences(saved, {"model": {"depth": 18, "tf_pooling": True}}, ("model",), defaults) == [
        "model.tf_pooling: None -> True"]
    assert config_differences(saved, {"model": {"depth": 34, "tf_pooling": False}}, ("model",), defaults) == [
        "model.depth: 18 -> 34"]
