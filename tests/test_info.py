"""``simclrv2 info``: what a run of a config would do on this machine, asked of the same functions training asks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from simclrv2.cli import main
from simclrv2.config import load_config
from simclrv2.errors import SimCLRv2Error
from simclrv2.info import FOLDER_GEOMETRY, format_info, machine_info, network_geometry
from simclrv2.models import conv, conv_rules
from simclrv2.models.cpu_kernels import active_kernels, fused_kernels
from simclrv2.runtime import resolve_precision


def _config(**overrides: str):
    return load_config(None, {"data.dataset": "fashion-mnist", "model.width_multiplier": "0.25", **overrides})


def test_the_json_report_is_the_only_thing_on_stdout_and_covers_every_convolution(capsys):
    assert main(["info", "--model.width_multiplier", "0.25", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert info["network"].startswith("ResNet-18 0.25x, CIFAR stem") and "28 px, 1 channel" in info["network"]
    # ResNet-18: the stem, 16 3x3 layers in the blocks and 3 projection shortcuts
    assert sum(row["layers"] for row in info["convolutions"]) == 20
    stem = info["convolutions"][0]
    assert stem["shape"] == "1->16 3x3/1 @28px"
    assert stem["input_gradient"] == "-"  # the images ask for no gradient, in training as here
    assert all(row[name] != "-" for row in info["convolutions"][1:]
               for name in ("forward", "input_gradient", "weight_gradient"))


def test_without_the_kernels_every_pass_is_onednns_but_the_stems_gemms_from_64_outputs():
    info = machine_info(_config(**{"run.fused_kernels": "false", "run.precision": "fp32"}))
    assert info["compiled_kernels"].startswith("off")
    rows = {row["shape"]: row for row in info["convolutions"]}
    assert {row["forward"] for shape, row in rows.items()} == {"oneDNN"}
    wide_stem = machine_info(_config(**{"run.fused_kernels": "false", "run.precision": "fp32",
                                        "model.width_multiplier": "1"}))["convolutions"][0]
    assert wide_stem["shape"] == "1->64 3x3/1 @28px"  # SINGLE_CHANNEL_MIN_OUT: GEMMs with or without the kernels
    assert (wide_stem["forward"], wide_stem["weight_gradient"]) == ("GEMM", "GEMM")


def test_the_plan_names_the_kernel_each_rule_gives_a_pass(kernels, monkeypatch):
    """With the AVX2 rules forced, fp32: Winograd's F(4x4) for the 3x3 stride-1 layers, the weight gradient onto
    4x4 maps from 256 outputs as a GEMM, the stem's own kernel below 64 outputs, oneDNN for the rest."""
    if not (kernels.has_winograd_conv() and kernels.has_direct_conv()):
        pytest.skip("the Winograd and direct kernels need AVX2 with FMA")
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", False)
    info = machine_info(_config(**{"run.precision": "fp32", "model.width_multiplier": "1"}))
    assert info["compiled_kernels"] == "on"
    rows = {row["shape"]: row for row in info["convolutions"]}
    assert rows["1->64 3x3/1 @28px"]["forward"] == "GEMM"  # 64 outputs: the stem's GEMMs, not its kernel
    for shape in ("64->64 3x3/1 @28px", "128->128 3x3/1 @14px", "512->512 3x3/1 @4px"):
        assert {rows[shape][name] for name in ("forward", "input_gradient", "weight_gradient")} == {"Winograd F(4x4)"}
    strided = rows["256->512 3x3/2 @4px"]
    assert (strided["forward"], strided["input_gradient"], strided["weight_gradient"]) == ("oneDNN", "oneDNN", "GEMM")
    assert rows["128->256 3x3/2 @7px"]["weight_gradient"] == "oneDNN"  # 7x7 maps: no rule of this kind

    narrow = machine_info(_config(**{"run.precision": "fp32", "model.width_multiplier": "0.25"}))["convolutions"]
    assert narrow[0]["forward"] == "stem kernel" and narrow[0]["weight_gradient"] == "stem kernel"
    monkeypatch.setattr(conv_rules, "FP32_AVX2_WINOGRAD_RULES", ())
    without_winograd = {row["shape"]: row for row in
                        machine_info(_config(**{"run.precision": "fp32"}))["convolutions"]}
    sixteen = without_winograd["16->16 3x3/1 @28px"]
    assert (sixteen["forward"], sixteen["input_gradient"], sixteen["weight_gradient"]) == (
        "direct 16-channel kernel", "direct 16-channel kernel", "oneDNN")


def test_under_bf16_math_the_plan_gives_onednn_what_winograd_would_take(kernels, monkeypatch):
    """A bf16-math run hands the fp32 3x3 layers to oneDNN's bf16 fpmath (conv_rules.fp32_math_is_exact), and the plan
    says so; the process's own fpmath setting is left as it was."""
    if not (kernels.has_winograd_conv() and hasattr(torch.backends.mkldnn.conv, "fp32_precision")):
        pytest.skip("needs the Winograd kernel and oneDNN's fpmath setting")
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", False)
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", True)
    monkeypatch.setattr("simclrv2.runtime.bf16_is_fast", lambda device: True)  # bf16-math warns where it is slow

    def layer(precision: str) -> dict:
        rows = {row["shape"]: row for row in machine_info(_config(**{"run.precision": precision}))["convolutions"]}
        return rows["64->64 3x3/1 @7px"]

    assert layer("fp32")["forward"] == "Winograd F(4x4)"
    assert {layer("bf16-math")[name] for name in ("forward", "input_gradient", "weight_gradient")} == {"oneDNN"}
    assert torch.backends.mkldnn.conv.fp32_precision == "none"


def test_the_process_kernel_switch_is_left_as_it_was(kernels):
    with fused_kernels(False):
        machine_info(_config())
        assert active_kernels() is None
    with fused_kernels(True):
        machine_info(_config(**{"run.fused_kernels": "false"}))
        assert active_kernels() is kernels


def test_the_network_geometry_is_the_datasets_the_configs_or_a_stated_assumption():
    assert network_geometry(_config().data)[:2] == (28, 1)
    assert network_geometry(load_config(None, {"data.dataset": "cifar10"}).data)[:2] == (32, 3)
    size, channels, source = network_geometry(load_config(None, {"data.dataset": "folder"}).data)
    assert (size, channels) == FOLDER_GEOMETRY and "assumed" in source
    chosen = load_config(None, {"data.dataset": "folder", "data.image_size": "64", "data.channels": "1"}).data
    assert network_geometry(chosen) == (64, 1, "the config's")
    with pytest.raises(SimCLRv2Error, match="unknown dataset 'nope'; choose one of: fashion-mnist, .*webdataset"):
        network_geometry(load_config(None, {"data.dataset": "nope"}).data)


def test_the_text_report_lists_the_set_up_then_the_plan(capsys):
    assert main(["info", "--config", "demo", "--run.fused_kernels", "false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("simclrv2 ")
    assert any(line.startswith("precision:    auto -> ") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layers", "shape"])
    assert lines[header].split()[2:] == ["forward", "input", "gradient", "weight", "gradient"]
    assert lines[header + 1].split()[:2] == ["1", "1->16"]
    assert format_info(machine_info(_config(**{"run.fused_kernels": "false"}))).count("\n") == len(lines) - 1


def test_off_the_cpu_the_plan_names_the_library_that_runs_the_convolution(monkeypatch):
    """cuDNN on CUDA while it is on, PyTorch's own kernels where it is off or on other devices (meta here)."""
    layer = conv.Conv2d(16, 16, 3, padding=1, bias=False).to("meta")
    x = torch.zeros(2, 16, 8, 8, device="meta", requires_grad=True)
    assert layer.engines(x) == {"forward": "PyTorch", "backward-data": "PyTorch", "backward-weights": "PyTorch"}
    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # all the choice reads of the tensor
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    assert conv._library_engine(on_cuda) == "cuDNN"
    monkeypatch.setattr(torch.backends.cudnn, "enabled", False)
    assert conv._library_engine(on_cuda) == "PyTorch"
