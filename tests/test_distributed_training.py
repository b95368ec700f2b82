"""Distributed training is correct by construction: 2 gloo processes on CPU against one process."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddp_step_helpers as helpers
import streaming_helpers
from conftest import free_port
from simclrv2.checkpoint import load_checkpoint, read_metrics


def test_one_pretraining_step_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """Same loss, parameter gradients and BN statistics as one process with plain BN on the whole batch:
    negatives gathered with gradients, global BN, DDP's gradient averaging, each process with its own images."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=helpers.worker, args=(r, port, str(tmp_path))) for r in range(helpers.WORLD)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0

    model = helpers.tiny_model()
    view1, view2 = helpers.global_views()
    loss = helpers.step_loss(model, view1, view2)
    loss.backward()
    for rank in range(helpers.WORLD):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(saved["loss"], loss.detach(), rtol=1e-9, atol=1e-12)
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(saved["grads"][name], parameter.grad, rtol=1e-7, atol=1e-10, msg=name)
        for name, buffer in model.named_buffers():
            torch.testing.assert_close(saved["buffers"][name], buffer, rtol=1e-9, atol=1e-12, msg=name)


def _torchrun(args: list[str], **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(free_port()), "-m", "simclrv2.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **kwargs)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``: torchrun starts its workers in sessions of their own, so killing the
    launcher's process group would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    for victim in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def test_two_process_run_is_resumed_and_evaluated_by_a_single_process(tmp_path, tiny_fashion):
    """torchrun with 2 CPU processes, stopped hard after its first checkpoint; one process resumes it to the end
    (same global batch) and evaluates it."""
    run_dir = tmp_path / "pretrain"
    options = ["--data.data_dir", str(tiny_fashion), "--model.width_multiplier", "0.125", "--pretrain.epochs", "20",
               "--pretrain.batch_size", "64", "--run.knn_every", "0", "--run.knn_k", "10", "--run.progress", "false",
               "--run.precision", "fp32"]
    job = _torchrun(["pretrain", "--run-dir", str(run_dir), *options])
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.is_file() and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    _kill_tree(job.pid)  # a crash: no chance to save anything more
    output = job.communicate()[0]
    assert last.is_file(), output
    saved_step = load_checkpoint(last)["step"]
    assert 0 < saved_step < 120  # 20 epochs of 6 steps; the run was stopped part-way

    resumed = subprocess.run([sys.executable, "-m", "simclrv2.cli", "pretrain", "--run-dir", str(run_dir),
                              "--resume", *options], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(run_dir)
    assert final["step"] == 120 and final["knn_top1"] is not None

    reported = json.loads((run_dir / "result.json").read_text())["details"]
    assert reported["knn_top1"] > reported["knn_top1_at_init"]  # the resumed run trained on past its checkpoint

    evaluated = subprocess.run([sys.executable, "-m", "simclrv2.cli", "evaluate", "--run-dir", str(tmp_path / "knn"),
                                "--evaluate.mode", "knn", "--evaluate.checkpoint", str(run_dir), *options],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    # the same bank (every labelled image outside validation), k and temperature as the run's own end-of-run kNN:
    # one process evaluating the finished weights gets the scores the run reported
    scores = json.loads((tmp_path / "knn" / "result.json").read_text())
    assert scores["val"]["top1"] == pytest.approx(reported["knn_top1"], abs=1e-9)
    assert scores["test"]["top1"] == pytest.approx(reported["test_knn_top1"], abs=1e-9)


@pytest.mark.slow
def test_two_process_finetune_and_distill_write_one_run_that_a_single_process_reads(tmp_path, tiny_fashion,
                                                                                   pretrained, finetuned):
    """Fine-tuning and distillation under torchrun: the same label subset as one process (the session's shared
    fine-tuning, conftest.py), one run directory written by rank 0, and a checkpoint whose single-process
    evaluation reproduces the reported accuracy."""
    options = ["--data.data_dir", str(tiny_fashion), "--model.width_multiplier", "0.125", "--run.progress", "false",
               "--run.precision", "fp32", "--finetune.labels", "10%", "--finetune.batch_size", "16",
               "--finetune.min_steps", "0", "--finetune.crop", "pad", "--distill.student_init", "scratch"]
    runs = {
        "ft2": ["finetune", "--finetune.pretrained", str(pretrained), "--finetune.epochs", "2"],
        "ds2": ["distill", "--distill.teacher", str(tmp_path / "ft2"), "--distill.epochs", "1",
                "--distill.batch_size", "64"],
    }
    for name, args in runs.items():
        job = _torchrun([*args, "--run-dir", str(tmp_path / name), *options])
        output = job.communicate(timeout=300)[0]
        assert job.returncode == 0, output
        reported = json.loads((tmp_path / name / "result.json").read_text())["test"]["top1"]
        evaluated = subprocess.run(
            [sys.executable, "-m", "simclrv2.cli", "evaluate", "--run-dir", str(tmp_path / f"eval-{name}"),
             "--evaluate.mode", "classifier", "--evaluate.checkpoint", str(tmp_path / name), *options],
            capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads((tmp_path / f"eval-{name}" / "result.json").read_text())["test"]["top1"] == reported
    subset = (tmp_path / "ft2" / "labelled_subset.txt").read_text()
    assert subset == (finetuned[0] / "labelled_subset.txt").read_text()
    written = {p.name for p in (tmp_path / "ft2").iterdir()} - {"tensorboard"}  # only with the extra installed
    assert sorted(written) == ["checkpoints", "config.toml", "labelled_subset.txt", "metrics.jsonl", "result.json"]


def test_two_process_streamed_finetune_equals_one_process_on_the_global_batch(tmp_path, monkeypatch):
    """Streamed fine-tuning under torchrun: each process decodes its own part of every step (the strided shard of
    the epoch's permutation), global BN and DDP's averaging make the step one process takes on the global batch,
    so the losses and weights are the single-process run's. The views are made deterministic (the whole image,
    no flip) because each process draws its crops from its own stream by design."""
    folder = tmp_path / "folder"
    streaming_helpers.write_folder(folder / "train", streaming_helpers.smooth_images(64, 16), classes=4)
    streaming_helpers.write_folder(folder / "test", streaming_helpers.smooth_images(8, 16, seed=1), classes=4)
    options = ["--data.dataset", "folder", "--data.data_dir", str(folder), "--data.image_size", "16",
               "--data.channels", "3", "--data.val_size", "8", "--data.workers", "0", "--model.width_multiplier",
               "0.125", "--model.proj_dim", "16", "--run.device", "cpu", "--run.precision", "fp32",
               "--run.progress", "false", "--run.knn_every", "0", "--run.log_every", "1"]
    pretrained = tmp_path / "pretrain"
    cli = [sys.executable, "-m", "simclrv2.cli"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the file index's cache
    done = subprocess.run([*cli, "pretrain", "--run-dir", str(pretrained), "--data.stream", "memory",
                           "--pretrain.batch_size", "8", "--pretrain.epochs", "1", *options],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    finetune = ["finetune", "--finetune.pretrained", str(pretrained), "--finetune.labels", "8/class",
                "--finetune.batch_size", "16", "--finetune.epochs", "3", "--finetune.min_steps", "0",
                "--finetune.crop", "resized", "--finetune.crop_scale", "1.0,1.0", "--finetune.flip_prob", "0",
                "--data.stream", "stream", *options]
    one = subprocess.run([*cli, *finetune, "--run-dir", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    job = _torchrun([*finetune, "--run-dir", str(tmp_path / "two")])
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output
    assert "streaming 64 images" in output

    def losses(run: str) -> list[float]:
        return [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["event"] == "train"]

    assert len(losses("two")) == 6  # 32 labels, batch 16, 3 epochs
    assert losses("two") == pytest.approx(losses("one"), rel=1e-5)
    single, double = (load_checkpoint(tmp_path / run / "checkpoints" / "final.pt")["model"] for run in ("one", "two"))
    for name, weight in single.items():
        torch.testing.assert_close(double[name].float(), weight.float(), rtol=1e-4, atol=1e-5, msg=name)
    results = [json.loads((tmp_path / run / "result.json").read_text()) for run in ("one", "two")]
    assert results[0]["test"]["confusion"] == results[1]["test"]["confusion"]
