"""`make bench`'s peer comparison and the streaming benchmarks, on fake result lines and a fake peer harness

(the real ones take minutes)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark

peer_compare = load_benchmark("peer_compare")


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


def test_rounds_give_medians_and_the_range_of_the_paired_ratios():
    ours = [{**_ours(0.25, e2e, e2e, 1e4), "round": k} for k, e2e in enumerate((300.0, 250.0, 280.0))]
    peers = [{**_peer("resnet18w025", e2e, e2e, 900.0), "round": k} for k, e2e in enumerate((200.0, 200.0))]
    peers.insert(1, {"error": "peer harness failed", "round": 2})  # round 2's peer failed: no pair for it
    lines = peer_compare.ratio_table(ours, peers).splitlines()
    assert "medians of 3 rounds" in lines[0]
    # medians 280 and 200; the rounds that have both sides: 300/200 and 250/200
    assert lines[2].split() == ["resnet18w0.25", "fp32", "end", "to", "end", "280.0", "200.0", "1.40x", "(1.25-1.50x)"]
    assert lines[4].split()[-2:] == ["11.11x", "(11.11-11.11x)"]
    one_round = peer_compare.ratio_table(ours[:1], peers[:1]).splitlines()
    assert one_round[2].split()[-1] == "1.50x" and "rounds" not in one_round[0]  # one round: no range


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


streaming_benchmark = load_benchmark("streaming_benchmark")


def _stream_row(images, loader, auto, fp32, first, rss, peer=None):
    row = {"ours": {"loader": {"pairs_per_s": loader, "images": images},
                    "train": {"auto": {"pairs_per_s": auto, "first_step_s": first, "peak_rss_mb": rss},
                              "fp32": {"pairs_per_s": fp32, "first_step_s": first + 1, "peak_rss_mb": rss + 50}}}}
    if peer:
        row["lightly"] = {"loader": {"pairs_per_s": peer[0]},
                          "train": {"pairs_per_s": peer[1], "first_step_s": peer[2], "peak_rss_mb": peer[3]}}
    return row


def test_streaming_table_is_ours_over_lightly_with_times_and_memory_inverted(tmp_path):
    args = argparse.Namespace(workers=2, batch=64, loader_batch=256, steps=12, copies=10, lightly=True)
    rows = {"small": _stream_row(60000, 1000.0, 80.0, 40.0, 10.0, 1000.0, peer=(500.0, 32.0, 20.0, 3000.0)),
            "10x hard links": _stream_row(600000, 990.0, 79.0, 40.0, 12.0, 1050.0)}
    lines = streaming_benchmark.table(args, rows, 96).splitlines()
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| small")]
    assert body[0][1:] == ["loader alone, pairs/s", "1000.0", "500.0", "2.00x"]
    assert body[1][1:] == ["end to end, pairs/s (ours auto)", "80.0", "32.0", "2.50x"]
    assert body[2][1:] == ["end to end, pairs/s (ours fp32)", "40.0", "32.0", "1.25x"]
    assert body[3][1:] == ["time to first step", "10.0 s", "20.0 s", "2.00x"]  # half the time: 2x better
    assert body[4][1:] == ["training peak RSS (process + workers)", "1000.0 MB", "3000.0 MB", "3.00x"]
    large = [line for line in lines if line.startswith("| 10x hard links (600,000 images) | loader")]
    assert large and large[0].rstrip().endswith("| - | - |")  # no peer measurement: no ratio
    assert "grows +5.0% from the small folder to the 10x one" in "\n".join(lines)

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- streaming-benchmark-96px -->\nold\n<!-- /streaming-benchmark-96px -->\nrest\n")
    streaming_benchmark.write_readme("streaming-benchmark-96px", "python x.py", "new table", readme)
    assert readme.read_text() == ("intro\n<!-- streaming-benchmark-96px -->\n`python x.py`\n\nnew table\n"
                                  "<!-- /streaming-benchmark-96px -->\nrest\n")


def test_streaming_stage_table_gives_each_stage_and_folder_and_checks_the_goals():
    def stages(finetune, distill):
        return {"finetune": {"first_step_s": finetune[0], "peak_rss_mb": finetune[1]},
                "distill": {"first_step_s": distill[0], "peak_rss_mb": distill[1]}}

    args = argparse.Namespace(workers=2, batch=64, loader_batch=256, steps=12, copies=10, lightly=False,
                              labels="60/class")
    rows = {"small": {"images": 60000, "ours": {"stages": stages((4.0, 1000.0), (6.0, 2000.0))}},
            "10x hard links": {"images": 600000, "ours": {"stages": stages((5.0, 1050.0), (16.5, 2300.0))}}}
    text = streaming_benchmark.table(args, rows, 96)
    assert "| folder | measure |" not in text  # pretraining was not measured: no table of it, no lightly
    assert "ours only (lightly is measured beside pretraining)" in text.splitlines()[0]
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(("| finetune", "| distill"))]
    assert body == [["finetune", "small (60,000 images)", "4.0 s", "1000.0 MB"],
                    ["finetune", "10x hard links (600,000 images)", "5.0 s", "1050.0 MB"],
                    ["distill", "small (60,000 images)", "6.0 s", "2000.0 MB"],
                    ["distill", "10x hard links (600,000 images)", "16.5 s", "2300.0 MB"]]
    assert "to the 10x one: finetune +5.0%, distill +15.0% (over) (goal: < 10%)." in text
    assert "Slowest first step: distill on the 10x hard links folder, 16.5 s (goal: <= 15 s each: missed)." in text
    assert "finetune on 60/class labels" in text


def test_a_classifier_stages_only_run_writes_its_own_readme_block():
    assert streaming_benchmark.readme_block_id(96, ["pretrain", "finetune"]) == "streaming-benchmark-96px"
    assert streaming_benchmark.readme_block_id(96, ["finetune", "distill"]) == "streaming-benchmark-96px-stages"


def test_workers_and_main_process_augment_to_the_same_views(tmp_path):
    """The placement benchmark compares speed only because both placements draw the same views."""
    from PIL import Image

    placement = load_benchmark("augment_placement")
    pixels = torch.randint(0, 256, (12, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(pixels):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(image.numpy()).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    main, workers = (list(placement.batches(tmp_path, 36, p, 1, 4, 2)) for p in placement.PLACEMENTS)
    assert len(main) == len(workers) == 2 and main[0].shape == (8, 3, 36, 36)
    assert all(torch.equal(a, b) for a, b in zip(main, workers, strict=True))
    assert not torch.equal(main[0], main[1])  # two steps, two sets of views


def test_stream_parity_table_pairs_stages_by_name_and_judges_both_goals():
    parity = load_benchmark("stream_parity")
    memory = {"stages": {"fine-tuned (1%)": 0.812, "supervised (1%)": 0.80}, "knn_final": 0.75}
    stream = {"stages": {"fine-tuned (1%)": 0.806, "supervised (1%)": 0.809, "linear (1%)": 0.7}, "knn_final": 0.738}
    table, verdicts = parity.parity_table({"memory": memory, "stream": stream})
    assert "| fine-tuned (1%) | 81.20 | 80.60 | -0.60 |" in table and "linear" not in table
    assert "| pretraining kNN monitor (final) | 75.00 | 73.80 | -1.20 |" in table
    assert verdicts == ["Largest stage gap 0.90 points (goal: within 0.5): not met.",
                        "kNN monitor gap 1.20 points (goal: within 1.0): not met."]
    close = {"stages": {"fine-tuned (1%)": 0.81, "supervised (1%)": 0.801}, "knn_final": 0.745}
    assert all(v.endswith(": met.") for v in parity.parity_table({"memory": memory, "stream": close})[1])
