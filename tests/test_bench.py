"""`make bench`'s peer comparison, on fake result lines and a fake peer harness (the real one takes minutes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "peer_compare", Path(__file__).parents[1] / "benchmarks" / "peer_compare.py")
peer_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_compare)


def _ours(width, e2e, model, data, precision="fp32"):
    return {"arch": f"resnet18w{width:g}", "width": width, "precision": precision,
            "e2e": {"pairs_per_s": e2e}, "model_only": {"pairs_per_s": model}, "data_only": {"pairs_per_s": data}}


def _peer(arch, e2e, model, data):
    return {"bench": "lightly_simclr_throughput", "arch": arch, "e2e": {"pairs_per_s": e2e},
            "model_only": {"pairs_per_s": model}, "data_only": {"pairs_per_s": data}}


def test_ratio_table_divides_ours_by_the_peer_of_the_same_width():
    ours = [_ours(0.25, 320.6, 317.2, 59672.8), _ours(1.0, 24.3, 23.5, 68066.1), _ours(0.5, 90.0, 88.0, 1e4)]
    peers = [_peer("resnet18", 18.8, 19.6, 892.0), _peer("resnet18w025", 206.1, 262.7, 907.0)]
    lines = peer_compare.ratio_table(ours, peers).splitlines()
    assert lines[2].split() == ["resnet18w0.25", "fp32", "end", "to", "end", "320.6", "206.1", "1.56x"]
    assert lines[3].split() == ["model", "step", "317.2", "262.7", "1.21x"]
    assert lines[4].split() == ["data", "only", "59672.8", "907.0", "65.79x"]
    assert lines[5].split()[-3:] == ["24.3", "18.8", "1.29x"]  # width 1 against lightly's resnet18
    assert lines[8] == "resnet18w0.5 fp32: no peer measurement at this width"


def test_a_failed_peer_run_leaves_its_width_without_ratios():
    table = peer_compare.ratio_table([_ours(0.25, 300.0, 300.0, 1e4)], [{"error": "peer harness failed"}])
    assert table.splitlines()[-1] == "resnet18w0.25 fp32: no peer measurement at this width"


def test_without_the_peer_venv_one_line_says_how_to_set_it_up(tmp_path):
    (tmp_path / "lightly_simclr_throughput.py").write_text("")
    message = peer_compare.peer_ready(tmp_path, tmp_path / "venv" / "bin" / "python")
    assert "\n" not in message and f"bash {tmp_path}/setup_peers.sh" in message and "make bench" in message
    assert "not found" in peer_compare.peer_ready(tmp_path / "elsewhere", Path(sys.executable))
    assert peer_compare.peer_ready(tmp_path, Path(sys.executable)) is None


@pytest.fixture
def fake_harness(tmp_path):
    """A stand-in for the shared script: prints a log line, then one JSON line naming its arguments."""
    (tmp_path / "lightly_simclr_throughput.py").write_text(
        "import json, os, sys\n"
        "print('loading data', file=sys.stderr)\n"
        "if '--fail' in os.environ.get('FAKE', ''): sys.exit('boom: out of memory')\n"
        "print('warming up')\n"
        "print(json.dumps({'arch': sys.argv[sys.argv.index('--arch') + 1], 'argv': sys.argv[1:],\n"
        "                  'fmnist': os.environ.get('FMNIST_DIR')}))\n")
    return tmp_path


def test_peer_run_calls_the_shared_script_with_the_matching_arch(fake_harness):
    line = peer_compare.run_peer(fake_harness, Path(sys.executable), 0.25, data_dir="/data/fm")
    assert line["arch"] == "resnet18w025" and line["fmnist"] == "/data/fm"
    assert line["argv"][line["argv"].index("--workers") + 1] == "0"
    assert peer_compare.run_peer(fake_harness, Path(sys.executable), 1.0)["arch"] == "resnet18"
    assert "no width 0.5" in peer_compare.run_peer(fake_harness, Path(sys.executable), 0.5)["error"]


def test_a_failing_peer_run_is_reported_not_raised(fake_harness, monkeypatch):
    monkeypatch.setenv("FAKE", "--fail")
    line = peer_compare.run_peer(fake_harness, Path(sys.executable), 0.25)
    assert line["error"].startswith("peer harness failed for resnet18w025 (exit 1): boom: out of memory")
    assert json.dumps(line)  # still a JSON line to print
