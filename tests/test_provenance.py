"""The provenance record: what it says can be read back, and a missing git never fails it."""

from __future__ import annotations

import json
import platform
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from simclrv2 import provenance as provenance_module
from simclrv2.provenance import provenance
from simclrv2.runtime import resolve_precision

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(folder, *args: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository whose tracked provenance.py stands in for the package source."""
    git(tmp_path, "init", "-q")
    (tmp_path / "provenance.py").write_text("# stand-in\n")
    git(tmp_path, "add", "provenance.py")
    git(tmp_path, "commit", "-qm", "one")
    monkeypatch.setattr(provenance_module, "_SOURCE", tmp_path)
    return tmp_path


def test_record_reads_back_through_json(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/home/someone/.venv/bin/simclrv2", "pretrain", "--run-dir", "runs/a"])
    record = json.loads(json.dumps(provenance(torch.device("cpu"), "fp32")))
    assert record["package"] == "simclrv2"
    assert record["torch"] == torch.__version__ and record["python"] == platform.python_version()
    assert record["device"] == "cpu" and record["device_name"] == provenance_module.cpu_model() != ""
    assert record["precision"] == "fp32" and isinstance(record["bf16_fast"], bool)
    assert record["command"] == ["simclrv2", "pretrain", "--run-dir", "runs/a"]  # no home folder
    host = socket.gethostname()
    assert len(host) < 4 or host not in json.dumps(record)


def test_auto_precision_is_recorded_as_the_one_used():
    assert provenance("cpu", "auto")["precision"] == resolve_precision("auto", torch.device("cpu"))


@needs_git
def test_git_commit_and_dirty_flag_of_the_source(repo):
    record = provenance("cpu", "fp32")
    assert record["git_commit"] == git(repo, "rev-parse", "HEAD") and len(record["git_commit"]) == 40
    assert record["git_dirty"] is False
    (repo / "provenance.py").write_text("# changed\n")
    assert provenance("cpu", "fp32")["git_dirty"] is True


@needs_git
def test_a_copy_untracked_inside_another_repository_has_no_commit(repo, monkeypatch):
    (repo / "site-packages").mkdir()
    (repo / "site-packages" / "provenance.py").write_text("# installed copy\n")
    monkeypatch.setattr(provenance_module, "_SOURCE", repo / "site-packages")
    assert provenance("cpu", "fp32")["git_commit"] is None


def test_without_git_the_commit_is_none(repo, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty_path")))
    record = provenance("cpu", "fp32")
    assert record["git_commit"] is None and record["git_dirty"] is None


def test_provenance_survives_a_weights_only_checkpoint_round_trip(tmp_path):
    from simclrv2.checkpoint import load_checkpoint, save_checkpoint

    record = provenance("cpu", "fp32")
    save_checkpoint(tmp_path / "c.pt", provenance=record)
    assert load_checkpoint(tmp_path / "c.pt")["provenance"] == record


def test_cpu_kind_names_the_bf16_features_and_an_isa_cap(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 xsave\n")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    kind = provenance_module.cpu_kind(cpuinfo)
    assert kind["cpu_flags"] == ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"]
    assert kind["onednn_max_cpu_isa"] == "AVX512_CORE_BF16" and kind["cpu_model"]
    assert kind["mkl_enable_instructions"] == "AVX2"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2\n")
    assert provenance_module.cpu_kind(cpuinfo) | {"cpu_model": ""} == {
        "cpu_model": "", "cpu_flags": ["avx2"], "onednn_max_cpu_isa": None, "mkl_enable_instructions": None}
    assert provenance_module.cpu_kind(tmp_path / "missing")["cpu_flags"] == []
