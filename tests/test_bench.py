"""`make bench`'s peer comparison, on fake result lines and a fake peer harness (the real one takes minutes)."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark
from simclrv2.models import cpu_kernels

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


conv_shapes = load_benchmark("conv_shapes")


def test_conv_shapes_cover_every_convolution_of_the_encoder_and_its_flops():
    from torch.utils.flop_counter import FlopCounterMode

    from simclrv2.models import resnet
    from simclrv2.models.cpu_kernels import fused_kernels

    shapes = conv_shapes.encoder_conv_shapes(0.25, batch=4)
    assert sum(shapes.values()) == 20  # CIFAR stem, 16 block convolutions, 3 projection shortcuts
    assert conv_shapes.ConvShape(4, 16, 28, 16, 3, 1, 1, 1) in shapes  # the first stage's 3x3
    # PyTorch's convolutions, which the counter sees, whatever switch an earlier test's session left on
    with fused_kernels(False), FlopCounterMode(display=False) as counter:
        resnet(18, 0.25, cifar_stem=True, in_channels=1)(torch.zeros(4, 1, 28, 28))
    assert sum(s.gflop * n for s, n in shapes.items()) * 1e9 == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_conv_shapes_rows_share_out_the_step_and_hold_each_pass_to_the_peak(monkeypatch):
    from simclrv2.models import conv_rules

    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", True)  # the rules' CPU kind, on any CI host
    rows = conv_shapes.rows_for(0.25, batch=2, precision="fp32", layout="channels_last", repeats=1, peak=1.0)
    assert sum(r["layers"] for r in rows) == 20
    shares = [r.get(f"{p}_time_share", 0.0) for r in rows for p in conv_shapes.PASSES]
    assert sum(shares) == pytest.approx(1.0, abs=0.01) and min(shares) >= 0
    assert not any(k.endswith("-gemm_ms") for r in rows for k in r)  # fp32 keeps oneDNN's passes
    rows = conv_shapes.rows_for(1.0, batch=2, precision="bf16", layout="channels_last", repeats=1, peak=1.0)
    shares = [r.get(f"{p}_time_share", 0.0) for r in rows for p in conv_shapes.PASSES]
    assert sum(shares) == pytest.approx(1.0, abs=0.01)
    # the last stages work on 7x7 and 4x4 output maps: in bf16 the step pays the GEMMs the rules pick there
    by_shape = {r["shape"]: r for r in rows}
    assert {k for k, r in by_shape.items() if "backward-weights-gemm_ms" in r} == {
        "128->256 3x3/2 @14px", "256->256 3x3/1 @7px", "128->256 1x1/2 @14px",  # 7x7 outputs, 256 columns
        "256->512 3x3/2 @7px", "512->512 3x3/1 @4px", "256->512 1x1/2 @7px",  # 4x4 outputs
        "1->64 3x3/1 @28px"}  # the one-channel stem, in every dtype
    assert {k for k, r in by_shape.items() if "forward-gemm_ms" in r} == {
        "256->512 3x3/2 @7px", "512->512 3x3/1 @4px", "256->512 1x1/2 @7px", "1->64 3x3/1 @28px"}
    assert {k for k, r in by_shape.items() if "backward-data-gemm_ms" in r} == {
        "512->512 3x3/1 @4px", "256->512 3x3/2 @7px", "256->512 1x1/2 @7px"}  # stride 2: by phases
    # what the step pays, before the shares' rounding: where bf16 is emulated (AVX2 hosts) the oneDNN passes
    # are slow enough that a small 1x1 pass's share rounds to 0.000
    for r in rows:
        for p in conv_shapes.ONEDNN_PASSES:
            gemm = f"{p}-gemm_ms" in r
            paid = conv_shapes._paid_ms(r, p)
            assert (paid == 0) == (gemm or (r is rows[0] and p == "backward-data")), (r["shape"], p)
            assert not gemm or conv_shapes._paid_ms(r, f"{p}-gemm") > 0
    # --candidates times the passes the rules leave to oneDNN too, without counting them in the step
    candidates = {r["shape"]: r for r in conv_shapes.rows_for(1.0, batch=2, precision="bf16", layout="channels_last",
                                                               repeats=1, peak=1.0, candidates=True)}
    seven = candidates["256->256 3x3/1 @7px"]
    assert {"forward-gemm_ms", "backward-data-gemm_ms"} <= seven.keys() and seven["forward-gemm_time_share"] == 0
    assert seven["forward_time_share"] > 0 and seven["backward-weights_time_share"] == 0
    assert "forward-gemm_ms" not in candidates["128->128 3x3/1 @14px"]  # 14x14 outputs: no candidate
    assert rows[0]["shape"].startswith("1->") and rows[0]["backward-data_time_share"] == 0  # the stem's input
    assert [r.get("backward-data_paid", True) for r in rows].count(False) == 4  # the stem and the three GEMMs
    assert all(r["forward_peak_share"] == r["forward_gflops"] for r in rows)  # peak 1 GFLOP/s: share = GFLOP/s
    assert "| 1 | bf16 | channels_last |" in conv_shapes.markdown(rows, {"bf16": 1.0})


def test_conv_shapes_count_the_direct_kernels_where_the_encoder_runs_them(fused):
    rows = conv_shapes.rows_for(0.25, batch=2, precision="fp32", layout="channels_last", repeats=1, peak=1.0)
    shares = [r.get(f"{p}_time_share", 0.0) for r in rows for p in conv_shapes.PASSES]
    assert sum(shares) == pytest.approx(1.0, abs=0.01) and min(shares) >= 0
    by_shape = {r["shape"]: r for r in rows}

    # timed, and the form the step pays; not its rounded share, which a loaded machine can round to 0 at batch 2
    def paid(row: dict, form: str) -> bool:
        return f"{form}_ms" in row and row.get(f"{form}_paid", True)

    stem = by_shape["1->16 3x3/1 @28px"]
    assert not paid(stem, "forward") and paid(stem, "forward-direct") and stem["forward_time_share"] == 0
    assert not paid(stem, "backward-weights") and paid(stem, "backward-weights-direct")
    assert stem["backward-weights_time_share"] == 0
    assert stem["backward-data_time_share"] == 0  # the images need no gradient
    from simclrv2.models import conv_rules

    def winograd(shape: str) -> bool:  # whether this CPU kind's Winograd rules take a 3x3 stride-1 layer's forward
        channels = [int(c) for c in shape.split(" ")[0].split("->")]
        tile = conv_rules.winograd_tile("forward", 3, 1, *channels, torch.float32, fused)
        return "3x3/1" in shape and tile is not None

    first_stage = by_shape["16->16 3x3/1 @28px"]
    if winograd(first_stage["shape"]):  # F(4x4, 3x3) takes all three passes
        for name in ("forward", "backward-data", "backward-weights"):
            assert not paid(first_stage, name) and paid(first_stage, f"{name}-direct")
            assert first_stage[f"{name}_time_share"] == 0
    elif fused.has_direct_conv():  # AVX2 or AVX-512
        assert not paid(first_stage, "forward") and paid(first_stage, "forward-direct")
        assert not paid(first_stage, "backward-data") and paid(first_stage, "backward-data-direct")
        assert first_stage["forward_time_share"] == first_stage["backward-data_time_share"] == 0
        assert paid(first_stage, "backward-weights")  # oneDNN's
    else:
        assert not any(k.endswith("-direct_ms") for k in first_stage)
    # beyond them, only Winograd's stride-1 3x3 layers, where the CPU kind has Winograd rules
    for row in rows:
        if row["shape"][:3] not in ("1->", "16-"):
            ours = any(k.endswith("-direct_ms") for k in row)
            assert ours == winograd(row["shape"]), row["shape"]


def _round(shapes_ms: dict[str, dict[str, float]]) -> list[dict]:
    """One round's rows as rows_for writes them (1 GFLOP a pass, one layer each)."""
    return [{"width": 1.0, "precision": "fp32", "layout": "channels_last", "shape": shape, "layers": 1, "gflop": 1.0,
             **{f"{p}_ms": ms for p, ms in passes.items()}, **{f"{p}_gflops": 1e3 / ms for p, ms in passes.items()},
             "forward_peak_share": 9.9, "forward_time_share": 9.9} for shape, passes in shapes_ms.items()]


def test_conv_shapes_rounds_give_each_pass_its_median_and_range_and_shares_from_the_medians():
    rounds = [_round({"a": {"forward": 10.0, "backward-weights": 30.0}, "b": {"forward": 20.0}}),
              _round({"a": {"forward": 40.0, "backward-weights": 10.0}, "b": {"forward": 20.0}}),
              _round({"a": {"forward": 20.0, "backward-weights": 20.0}, "b": {"forward": 60.0}})]
    a, b = conv_shapes.median_rows(rounds, peak=100.0)
    assert (a["forward_ms"], a["forward_ms_range"], a["backward-weights_ms"]) == (20.0, [10.0, 40.0], 20.0)
    assert (b["forward_ms"], b["forward_ms_range"]) == (20.0, [20.0, 60.0])
    assert a["forward_gflops"] == 50.0 and a["forward_peak_share"] == 0.5  # 1 GFLOP in 20 ms, of 100 GFLOP/s
    assert (a["forward_time_share"], a["backward-weights_time_share"], b["forward_time_share"]) == (
        pytest.approx(1 / 3, abs=1e-3), pytest.approx(1 / 3, abs=1e-3), pytest.approx(1 / 3, abs=1e-3))
    assert "backward-data_ms" not in a  # a pass no round timed stays out
    with pytest.raises(ValueError, match="different shapes"):
        conv_shapes.median_rows([rounds[0], list(reversed(rounds[1]))], peak=100.0)
    assert conv_shapes._without_option(["--rounds", "3", "--width", "1", "--rounds=2", "--out", "f"], "--rounds") \
        == ["--width", "1", "--out", "f"]


def test_conv_shapes_rounds_run_fresh_processes_and_write_each_round_and_the_medians(tmp_path, capsys):
    out = tmp_path / "shapes.jsonl"
    assert conv_shapes.main(["--width", "0.25", "--precision", "fp32", "--batch", "1", "--repeats", "1",
                             "--rounds", "2", "--out", str(out)]) == 0
    header, *rows = (json.loads(line) for line in out.read_text().splitlines())
    assert header["rounds"] == 2 and len(header["gemm_peak_gflops_range"]["fp32"]) == 2
    shapes = len(conv_shapes.encoder_conv_shapes(0.25, batch=2))
    assert [r["round"] for r in rows] == [0] * shapes + [1] * shapes + ["median"] * shapes
    medians = [r for r in rows if r["round"] == "median"]
    for r in medians:
        low, high = r["forward_ms_range"]
        assert low <= r["forward_ms"] <= high
    assert sum(r.get(f"{p}_time_share", 0.0) for r in medians for p in conv_shapes.PASSES) == pytest.approx(1, abs=0.02)
    assert "| 0.25 | fp32 | channels_last |" in capsys.readouterr().out


def test_conv_shapes_time_the_rule_set_they_are_given(tmp_path, monkeypatch):
    from simclrv2.models import conv_rules

    for name in sys.modules["pretrain_throughput"].RULE_NAMES:  # loaded by conv_shapes
        monkeypatch.setattr(conv_rules, name, getattr(conv_rules, name))  # put back after the test, whatever happens
    out = tmp_path / "shapes.jsonl"
    assert conv_shapes.main(["--width", "0.25", "--precision", "fp32", "--batch", "1", "--repeats", "1",
                             "--gemm-rules", "no-winograd", "--out", str(out)]) == 0
    header, *rows = (json.loads(line) for line in out.read_text().splitlines())
    assert header["gemm_rules"] == "no-winograd"
    assert conv_rules.FP32_AVX2_WINOGRAD_RULES == conv_rules.FP32_AVX512_BF16_WINOGRAD_RULES == ()
    for row in rows:  # only the stem and the 16-channel direct kernel are ours without Winograd's rules
        if row["shape"][:3] not in ("1->", "16-"):
            assert not any(k.endswith("-direct_ms") for k in row), row["shape"]
        if row["shape"].startswith("16->16"):
            assert "backward-weights-direct_ms" not in row


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


step_profile = load_benchmark("step_profile")


def test_step_profile_shares_out_one_training_step_by_operator(capsys):
    step_profile.main(["--width", "0.25", "--batch", "2", "--precision", "fp32", "--no-keep-freed-memory",
                       "--no-fused-kernels", "--rows", "1000", "--dram-copy-mib", "8"])
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["keep_freed_memory"] is False and record["fused_kernels"] is False and record["step_s"] > 0
    names = {op["name"] for op in record["ops"]}
    assert {"aten::convolution_backward", "aten::native_batch_norm_backward"} <= names
    shares = [op["share"] for op in record["ops"]]
    assert shares == sorted(shares, reverse=True)
    # every operator listed (more rows than operators), so the shares sum to one up to each row's rounding;
    # a load-independent check: a busy CPU moves time between operators, not out of the table
    assert abs(sum(shares) - 1.0) <= 0.0005 * len(shares) + 1e-9
    assert min(record[k] for k in ("relu_backward_gbps", "copy_gbps", "add_gbps", "dram_copy_gbps")) > 0


gemm_rules_ab = load_benchmark("gemm_rules_ab")


def test_gemm_rules_ab_alternates_the_rule_sets_step_by_step_and_restores_the_default(monkeypatch, capsys):
    from simclrv2.models import conv_rules

    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", True)  # where the bf16 rules apply: the sets differ in what runs
    for name in sys.modules["pretrain_throughput"].RULE_NAMES:  # loaded by gemm_rules_ab
        monkeypatch.setattr(conv_rules, name, getattr(conv_rules, name))  # put back after the test, whatever happens
    seen = []
    step = gemm_rules_ab.step_seconds
    monkeypatch.setattr(gemm_rules_ab, "step_seconds",
                        lambda *a: seen.append(conv_rules.GEMM_RULES) or step(*a))
    assert gemm_rules_ab.main(["--width", "0.125", "--batch", "2", "--precision", "bf16", "--pairs", "3",
                               "--warmup", "1", "--rules", "default", "none"]) == 0
    record = json.loads(capsys.readouterr().out)
    default = gemm_rules_ab.GEMM_RULE_SETS["default"]["GEMM_RULES"]
    assert seen == [default, (), default, (), (), default, default, ()]  # warm-ups, then A B, B A, A B
    assert conv_rules.GEMM_RULES == default  # the package's rules again after the A/B
    assert len(record["steps_s"]["default"]) == len(record["steps_s"]["none"]) == 3
    low, high = record["default_over_none"]["range"]
    assert low <= record["default_over_none"]["median"] <= high
    with pytest.raises(SystemExit):
        gemm_rules_ab.main(["--rules", "none", "none"])


bn_relu_shapes = load_benchmark("bn_relu_shapes")


def test_bn_relu_shapes_rates_keep_three_figures_so_a_slow_tiny_shape_is_not_zero():
    assert bn_relu_shapes.gb_per_s(131_072, 3e-3) == 0.0437  # one decimal made it 0.0, failing the test below
    assert bn_relu_shapes.gb_per_s(102_760_448, 3.45e-3) == 29.8


@pytest.mark.skipif(not cpu_kernels.compiler_available(), reason="no C++ compiler")
def test_bn_relu_shapes_times_both_paths_for_every_stage(capsys):
    assert bn_relu_shapes.main(["--width", "0.125", "--batch", "2", "--precision", "fp32", "--repeats", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["channels"], r["size"], r["shortcut"]) for r in records] == [
        (c, s, shortcut) for c, s in ((8, 28), (16, 14), (32, 7), (64, 4)) for shortcut in (False, True)]
    assert all(r["pytorch_ms"] > 0 and r["fused_ms"] > 0 and r["fused_gbps"] > 0 for r in records)
    assert all(r["bn_only_pytorch_ms"] > 0 and r["bn_only_fused_ms"] > 0 for r in records if not r["shortcut"])


eval_forward_ab = load_benchmark("eval_forward_ab")


def test_eval_forward_ab_alternates_the_two_batchnorm_paths_and_restores_the_package(fused, monkeypatch, capsys):
    from simclrv2.models import bn_relu

    package_test = bn_relu._fusable_eval
    eval_calls = []
    real = fused.bn_relu_eval
    monkeypatch.setattr(fused, "bn_relu_eval", lambda *a: eval_calls.append(1) or real(*a), raising=False)
    paths = []
    timed = eval_forward_ab.encoder_features
    monkeypatch.setattr(eval_forward_ab, "encoder_features",
                        lambda *a: paths.append((bn_relu._fusable_eval is package_test, len(eval_calls))) or timed(*a))
    assert eval_forward_ab.main(["--width", "0.125", "--precision", "fp32", "--images", "8", "--batch-size", "4",
                                 "--pairs", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [kernel for kernel, _ in paths] == [True, False, True, False, False, True]  # warm-ups, A B, B A
    calls_before = [count for _, count in paths] + [len(eval_calls)]
    added = [b - a for a, b in itertools.pairwise(calls_before)]
    assert added == [40, 0, 40, 0, 0, 40]  # 20 BatchNorms a batch, two batches, on the kernel's path only
    assert bn_relu._fusable_eval is package_test
    low, high = record["pytorch_over_kernel"]["range"]
    assert low <= record["pytorch_over_kernel"]["median"] <= high and len(record["seconds"]["kernel"]) == 2


predict_ab = load_benchmark("predict_ab")


def test_predict_ab_rotates_kernels_and_pytorchs_ops_on_both_layouts_and_leaves_the_switch_off(
        kernels, unfused, monkeypatch, capsys):
    from simclrv2.models import bn_relu, cpu_kernels

    seen = []
    predict = predict_ab.LoadedModel.predict

    def spy(model, images, batch_size, precision, fused_kernels):
        evaluated = []
        real = bn_relu._evaluated
        monkeypatch.setattr(bn_relu, "_evaluated", lambda *a, **k: evaluated.append(1) or real(*a, **k))
        try:
            return predict(model, images, batch_size=batch_size, precision=precision, fused_kernels=fused_kernels)
        finally:
            monkeypatch.setattr(bn_relu, "_evaluated", real)
            weight = next(w for w in model.encoder.parameters() if w.dim() == 4 and w.shape[1] > 1)
            layout = weight.is_contiguous(memory_format=torch.channels_last)  # a 1-channel stem is both
            seen.append((fused_kernels, layout, len(evaluated)))

    monkeypatch.setattr(predict_ab.LoadedModel, "predict", spy)
    assert predict_ab.main(["--width", "0.125", "--images", "8", "--batch-size", "4", "--rounds", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    # 20 BatchNorms a batch, two batches, on the kernels' path only, whose network keeps the layout it loads in
    on, off, off_last = (True, False, 40), (False, False, 0), (False, True, 0)
    assert seen == [on, off, off_last, on, off, off_last, off_last, off, on]  # warm-ups, A B C, C B A
    assert cpu_kernels.active_kernels() is None
    for name in ("pytorch", "pytorch-channels-last"):
        low, high = record[f"{name}_over_kernels"]["range"]
        assert low <= record[f"{name}_over_kernels"]["median"] <= high and len(record["seconds"][name]) == 2


sk_mix_ab = load_benchmark("sk_mix_ab")


def test_sk_mix_ab_times_the_same_gradients_on_every_path_and_restores_the_package(capsys):
    """The autograd path is the same function as the package's (same output and gradients), so the ratios compare
    ways of doing one thing; the paths alternate (the compiled mix on for the package's alone) and the package's
    forward and its compiled mix are back afterwards."""
    from simclrv2.models import SelectiveKernelConv, selective_kernel

    torch.manual_seed(0)
    sk = SelectiveKernelConv(4, 6, 2, 0.0625).double()
    x = torch.randn(3, 4, 7, 7, dtype=torch.double).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(3, 6, 4, 4, dtype=torch.double)

    def grads(forward):
        sk.zero_grad()
        out = forward(sk, x)
        (out * upstream).sum().backward()
        return [out.detach()] + [p.grad.clone() for p in sk.parameters()]

    for got, want in zip(grads(SelectiveKernelConv.forward), grads(sk_mix_ab.autograd_forward), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

    package = SelectiveKernelConv.forward
    paths = []
    step = sk_mix_ab.encoder_step
    sk_mix_ab.encoder_step = lambda *a: paths.append(
        (SelectiveKernelConv.forward is package, selective_kernel.COMPILED_MIX)) or step(*a)
    try:
        assert sk_mix_ab.main(["--width", "0.125", "--precision", "fp32", "--batch", "4", "--pairs", "2"]) == 0
    finally:
        sk_mix_ab.encoder_step = step
    package_path, pytorch_mix, autograd = (True, True), (True, False), (False, False)
    # warm-ups, then A B C and C B A
    assert paths == [package_path, pytorch_mix, autograd] * 2 + [autograd, pytorch_mix, package_path]
    assert SelectiveKernelConv.forward is package and selective_kernel.COMPILED_MIX
    record = json.loads(capsys.readouterr().out)
    for name in ("autograd", "pytorch_mix"):
        low, high = record[f"{name}_over_package"]["range"]
        assert low <= record[f"{name}_over_package"]["median"] <= high
    assert len(record["seconds"]["package"]) == len(record["seconds"]["pytorch-mix"]) == 2


winograd_transform_ab = load_benchmark("winograd_transform_ab")


@pytest.mark.parametrize("tile", (2, 4))
def test_winograd_transform_ab_sides_compute_the_same_passes(winograd_kernels, tile):
    """The three sides differ in how the weights are transformed, not in what the passes give."""
    from simclrv2.models import winograd

    kernels = winograd_kernels
    gen = torch.Generator().manual_seed(tile)
    x = torch.randn(2, 16, 6, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 32, 6, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(32, 16, 3, 3, generator=gen) / 12).contiguous(memory_format=torch.channels_last)
    package = {name: getattr(winograd, name) for name in ("forward", "input_grad", "weight_grad")}
    close = {"rtol": 1e-4, "atol": 1e-4}  # F(4x4)'s float32 rounding (tests/test_winograd_conv.py's bounds)
    for side in (winograd_transform_ab.gemm_passes(), winograd_transform_ab.einsum_passes()):
        torch.testing.assert_close(side["forward"](kernels, x, weight, tile),
                                   package["forward"](kernels, x, weight, tile), **close)
        torch.testing.assert_close(side["input_grad"](kernels, grad_out, weight, tile),
                                   package["input_grad"](kernels, grad_out, weight, tile), **close)
        torch.testing.assert_close(side["weight_grad"](kernels, x, grad_out, tile),
                                   package["weight_grad"](kernels, x, grad_out, tile), **close)


def test_winograd_transform_ab_rotates_the_sides_and_restores_the_package(kernels, monkeypatch, capsys):
    from simclrv2.models import winograd

    package = winograd.forward
    seen = []
    real_cross_entropy = winograd_transform_ab.F.cross_entropy

    def spy(*args, **kwargs):
        seen.append(winograd.forward is package)
        return real_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(winograd_transform_ab.F, "cross_entropy", spy)
    assert winograd_transform_ab.main(["--width", "0.125", "--batch", "4", "--pairs", "3"]) == 0
    # warm-ups (compiled, gemm, einsum twice), then rounds rotating: ABC, BCA, CAB
    assert seen == [True, False, False] * 2 + [True, False, False, False, False, True, False, True, False]
    assert winograd.forward is package
    record = json.loads(capsys.readouterr().out)
    for side in ("gemm", "einsum"):
        low, high = record[f"compiled_over_{side}_quartiles"]
        assert low <= record[f"compiled_over_{side}_median"] <= high and record[f"{side}_ms"] > 0


optimizer_step_ab = load_benchmark("optimizer_step_ab")


def test_optimizer_step_ab_times_the_default_and_the_fused_step_of_both_optimizers(capsys):
    assert optimizer_step_ab.main(["--width", "0.125", "--rounds", "3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["optimizer"] for r in records] == ["sgd", "adamw"]
    for record in records:
        assert record["default_ms"] > 0 and record["fused_ms"] > 0 and record["fused_over_default"] > 0
        assert record["parameters"] > 0 and record["rounds"] == 3
