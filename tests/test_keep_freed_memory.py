"""run.keep_freed_memory: on glibc, a large tensor's memory stays with the process after it is freed (so the next
step reuses it instead of page-faulting fresh pages), and training sessions on CPU turn it on unless told not to.
Checked in child processes: the allocator's settings last for the life of a process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from simclrv2.config import load_config
from simclrv2.stages import session

CHILD = """
import json, sys
import torch
from simclrv2.runtime import keep_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

applied = keep_freed_memory() if sys.argv[1] == "on" else False
before = rss_mb()
big = torch.ones(64 * 2**20 // 4)  # 64 MB, above glibc's largest mmap threshold
del big
print(json.dumps({"applied": applied, "kept_mb": rss_mb() - before}))
"""


def _child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")
def test_freed_memory_is_kept_for_reuse_only_when_asked():
    default, kept = _child("off"), _child("on")
    assert kept["applied"] and not default["applied"]
    assert default["kept_mb"] < 16  # glibc unmapped the 64 MB at once
    assert kept["kept_mb"] > 48  # kept in the heap for the next allocation


@pytest.mark.parametrize("wanted", [True, False])
def test_a_cpu_session_keeps_freed_memory_unless_told_not_to(monkeypatch, tmp_path, wanted):
    calls = []
    monkeypatch.setattr(session, "keep_freed_memory", lambda: calls.append(True) or True)
    config = load_config("demo", {"run.device": "cpu", "run.keep_freed_memory": str(wanted).lower()})
    session.open_session("pretrain", config, tmp_path / "run", resume=False, overwrite=False)
    assert calls == ([True] if wanted else [])
