"""Preemption and failures under torchrun (2 gloo processes): a signal or a NaN on one rank stops every rank
cleanly, leaves one consistent checkpoint, and the run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from simclrv2.checkpoint import load_checkpoint, read_metrics
from test_distributed_training import _descendants, _kill_tree

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds workers via /proc")]


def _options(data: Path) -> list[str]:
    return ["--data.data_dir", str(data), "--model.width_multiplier", "0.125", "--pretrain.epochs", "20",
            "--pretrain.batch_size", "64", "--run.knn_every", "0", "--run.progress", "false",
            "--run.precision", "fp32", "--run.log_every", "1"]


def _launch(target: list[str], run_dir: Path, data: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           *target, "pretrain", "--run-dir", str(run_dir), *_options(data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                               os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _rank_pid(job: subprocess.Popen, rank: int) -> int | None:
    for pid in _descendants(job.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"simclrv2.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


def test_sigterm_to_rank_1_only_stops_both_ranks_with_one_checkpoint_that_resumes(tmp_path, tiny_fashion):
    run_dir = tmp_path / "run"
    job = _launch(["-m", "simclrv2.cli"], run_dir, tiny_fashion)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(read_metrics(run_dir / "metrics.jsonl")) < 3:
            time.sleep(0.2)
        victim = _rank_pid(job, 1)
        assert victim is not None
        os.kill(victim, signal.SIGTERM)
        output = job.communicate(timeout=120)[0]
    finally:
        _kill_tree(job.pid)
    assert job.returncode != 0
    assert "stopped by signal 15" in output and "--resume" in output
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 0 < saved["step"] < 120
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]
    assert steps[-1] <= saved["step"]  # rank 0 logged nothing past the step both ranks agreed to stop at
    resumed = subprocess.run([sys.executable, "-m", "simclrv2.cli", "pretrain", "--run-dir", str(run_dir), "--resume",
                              *_options(tiny_fashion)], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run_dir)["step"] == 120
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]
    assert steps == sorted(set(steps))


def test_a_nan_on_rank_1_only_stops_both_ranks_with_a_message_and_no_hang(tmp_path, tiny_fashion):
    driver = str(Path(__file__).parent / "nonfinite_on_one_rank.py")
    job = _launch([driver], tmp_path / "run", tiny_fashion)
    try:
        output = job.communicate(timeout=180)[0]  # a hang would end here, not in a passing test
    finally:
        _kill_tree(job.pid)
    assert job.returncode != 0
    assert output.count("pretrain: the loss became") >= 1 and "at step 3" in output
