"""The per-shape convolution benchmark (conv_shapes.py): its shapes, shares of the step and rounds, on tiny runs."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmark_scripts import load_benchmark

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


def test_conv_shapes_rows_share_out_the_step_and_hold_each_pass_to_the_peak(amx):
    """On the rules' CPU kind (AMX), whatever the CI host."""
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
