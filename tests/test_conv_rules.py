"""Where the encoder's Conv2d runs a pass as a GEMM, per CPU kind (AMX, AVX-512-BF16 without AMX, AVX2): the
measured rules of simclrv2.models.conv_rules, the ISA answers they read, and the passes those rules pick agreeing with
oneDNN's and float64's results."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simclrv2.models import conv_rules
from simclrv2.models.conv import Conv2d
from simclrv2.models.conv_rules import gemm_passes
from simclrv2.models.resnet import resnet


def test_the_rules_pick_gemms_for_small_maps_and_wide_products(amx, monkeypatch):
    every = {"forward", "backward-data", "backward-weights"}
    assert gemm_passes(1, 16, 512, 512) == every  # width 1's last stage
    assert gemm_passes(2, 16, 256, 512) == every  # stride 2's input gradient by phases from 128 input channels
    assert gemm_passes(2, 16, 128, 256) == {"backward-data", "backward-weights"}
    assert gemm_passes(2, 16, 64, 128) == gemm_passes(2, 49, 128, 256) == {"backward-weights"}
    assert gemm_passes(1, 16, 256, 256) == gemm_passes(1, 16, 64, 64) == {"backward-weights"}  # narrower ones
    assert gemm_passes(1, 49, 256, 256) == gemm_passes(2, 49, 128, 256) == {"backward-weights"}
    assert gemm_passes(1, 49, 128, 128) == gemm_passes(1, 64, 512, 512) == frozenset()
    # with the compiled re-layouts the weight gradient on 7x7 maps is a GEMM from 128 columns; larger maps stay
    assert gemm_passes(1, 49, 128, 128, compiled_layouts=True) == gemm_passes(2, 49, 64, 128, compiled_layouts=True) \
        == {"backward-weights"}
    assert gemm_passes(1, 49, 64, 64, compiled_layouts=True) == gemm_passes(1, 64, 128, 128, compiled_layouts=True) \
        == frozenset()
    monkeypatch.setattr(conv_rules, "GEMM_RULES", ())
    assert gemm_passes(1, 16, 512, 512) == frozenset()  # read at call time: the benchmarks' A/B switch
    monkeypatch.setattr(conv_rules, "GEMM_RULES_WITH_COMPILED_LAYOUTS", ())
    assert gemm_passes(1, 49, 128, 128, compiled_layouts=True) == frozenset()


def test_the_module_takes_the_compiled_layout_rules_only_where_the_kernels_run(amx, request):
    ours = Conv2d(16, 128, 3, padding=1, bias=False)  # on 7x7 maps only the compiled-layout rule makes a GEMM of it
    x = torch.randn(2, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    request.getfixturevalue("unfused")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).grad_fn.name() == "ConvolutionBackward0"
    request.getfixturevalue("fused")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).grad_fn.passes == {"backward-weights"}
        assert ours(x.contiguous()).grad_fn.name() == "ConvolutionBackward0"  # NCHW: the kernels cannot lay it out


def test_without_amx_in_onednn_every_pass_stays_onednn(monkeypatch):
    """Measured with oneDNN held to AVX-512-BF16 on an AMX CPU: the GEMMs made the step slower there."""
    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", False)
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", False)  # an AMX Xeon held below AMX
    assert gemm_passes(1, 16, 512, 512) == gemm_passes(2, 16, 256, 512) == frozenset()


@pytest.fixture
def zen4(monkeypatch):
    """A CPU with AVX-512-BF16 and no AMX (AMD's Zen 4), oneDNN on its AVX-512 kernels."""
    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", False)
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", False)
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", True)


def test_on_avx512_bf16_without_amx_the_strided_weight_gradient_onto_small_maps_is_a_gemm(zen4, monkeypatch):
    bf16, strided_weight_grad = torch.bfloat16, {"backward-weights"}
    assert gemm_passes(2, 16, 256, 512, bf16) == gemm_passes(2, 49, 128, 256, bf16) == strided_weight_grad
    assert gemm_passes(2, 16, 64, 128, bf16) == gemm_passes(2, 49, 32, 64, bf16) == strided_weight_grad
    assert gemm_passes(1, 16, 512, 512, bf16) == gemm_passes(1, 49, 256, 256, bf16) == frozenset()  # stride 1
    assert gemm_passes(2, 196, 64, 128, bf16) == frozenset()  # larger maps
    assert gemm_passes(2, 16, 256, 512, torch.float32) == gemm_passes(2, 16, 256, 512, torch.float16) == frozenset()
    monkeypatch.setattr(conv_rules, "AVX512_BF16_GEMM_RULES", ())
    assert gemm_passes(2, 16, 256, 512, bf16) == frozenset()  # read at call time: the benchmarks' A/B switch


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_the_strided_bf16_weight_gradient_gemm_equals_onednns_and_float64(zen4, fused, monkeypatch, kernel_size):
    torch.manual_seed(5)
    layer = Conv2d(8, 64, kernel_size, stride=2, padding=kernel_size // 2, bias=False)
    x = torch.randn(3, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(3, 64, 4, 4)

    def weight_grad() -> tuple[Any, torch.Tensor]:
        layer.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.backward(grad_out.to(y.dtype))
        return y.grad_fn, layer.weight.grad

    ours_fn, ours = weight_grad()
    assert ours_fn.name() == "_CpuConvBackward" and ours_fn.passes == {"backward-weights"}
    monkeypatch.setattr(conv_rules, "AVX512_BF16_GEMM_RULES", ())
    onednn_fn, onednn = weight_grad()
    assert onednn_fn.name() != "_CpuConvBackward" or not onednn_fn.passes
    exact = torch.nn.grad.conv2d_weight(x.bfloat16().double(), layer.weight.shape, grad_out.bfloat16().double(),
                                        stride=2, padding=kernel_size // 2)
    for got in (ours, onednn):  # fp32 sums of the same bf16 products, each rounded once to bf16
        torch.testing.assert_close(got.double(), exact, rtol=2 ** -7, atol=1e-2)


def test_the_amx_answer_follows_the_isa_cap_the_process_started_with():
    code = "from simclrv2.models import conv_rules; print(conv_rules.ONEDNN_USES_AMX)"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    capped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert capped.stdout.strip() == "False"  # whatever this CPU has


def test_torch_compile_traces_the_encoder_without_graph_breaks(amx):
    """A graph break at every convolution made the compiled step 8x slower (recompiles past dynamo's limit)."""
    model = resnet(18, width_multiplier=0.25, cifar_stem=True)
    torch._dynamo.reset()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            explanation = torch._dynamo.explain(model)(torch.randn(4, 3, 32, 32))
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize(("has_amx", "cap", "expected"),
                         [(True, None, True), (True, "ALL", True), (True, "avx512_core_amx", True),
                          (True, "AVX10_1_512_AMX_FP16", True), (True, "AVX512_CORE_BF16", False),
                          (True, "AVX2", False), (False, None, False), (False, "ALL", False)])
def test_onednn_uses_amx_where_the_cpu_has_it_and_no_isa_cap_holds_it_back(monkeypatch, has_amx, cap, expected):
    from simclrv2 import runtime

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: has_amx)
    assert runtime.onednn_uses_amx(cap) is expected


@pytest.mark.parametrize(("has_avx2", "has_avx512", "cap", "expected"),
                         [(True, False, None, True), (True, False, "ALL", True), (True, True, None, False),
                          (True, True, "avx2", True), (True, True, "AVX2_VNNI", True),
                          (True, True, "AVX512_CORE", False), (False, False, None, False)])
def test_onednn_runs_avx2_where_the_cpu_lacks_avx512_or_a_cap_holds_it_there(monkeypatch, has_avx2, has_avx512, cap,
                                                                           expected):
    from simclrv2 import runtime

    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: has_avx2)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: has_avx512)
    assert runtime.onednn_runs_avx2(cap) is expected


@pytest.fixture
def avx2(monkeypatch):
    """A CPU whose oneDNN runs its AVX2 kernels, where the fp32 rules apply (CI machines may have AVX-512)."""
    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", False)
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)


def test_in_fp32_on_avx2_the_weight_gradient_onto_4x4_maps_from_256_outputs_is_a_gemm(avx2, monkeypatch):
    fp32 = torch.float32
    assert gemm_passes(1, 16, 512, 512, fp32) == gemm_passes(2, 16, 256, 512, fp32) == {"backward-weights"}
    assert gemm_passes(1, 16, 256, 256, fp32) == {"backward-weights"}
    assert gemm_passes(1, 16, 128, 128, fp32) == gemm_passes(2, 16, 64, 128, fp32) == frozenset()  # measured slower
    assert gemm_passes(1, 49, 256, 256, fp32) == gemm_passes(2, 49, 128, 256, fp32) == frozenset()  # 7x7 maps
    assert gemm_passes(1, 16, 512, 512, torch.bfloat16) == frozenset()  # no AMX: bf16 keeps oneDNN
    monkeypatch.setattr(conv_rules, "FP32_AVX2_GEMM_RULES", ())
    assert gemm_passes(1, 16, 512, 512, fp32) == frozenset()  # read at call time: the benchmarks' A/B switch
    monkeypatch.setattr(conv_rules, "FP32_AVX2_GEMM_RULES", (("backward-weights", 16, 256),))
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", False)
    assert gemm_passes(1, 16, 512, 512, fp32) == frozenset()  # AVX-512's fp32 kernels were not measured slower


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_fp32_avx2_weight_gradient_gemm_equals_nn_conv2d(avx2, request, compiled, stride):
    request.getfixturevalue("fused" if compiled else "unfused")
    torch.manual_seed(3)
    reference = nn.Conv2d(8, 256, 3, stride=stride, padding=1, bias=False)
    ours = Conv2d(8, 256, 3, stride=stride, padding=1, bias=False)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 8, 4 * stride, 4 * stride).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(3, 256, 4, 4)
    y = ours(x)
    assert y.grad_fn.name() == "_CpuConvBackward" and y.grad_fn.passes == {"backward-weights"}
    y.backward(grad_out)
    x64 = x.detach().double()
    expected = F.conv2d(x64, reference.weight.double(), stride=stride, padding=1)
    expected_grad_w = torch.nn.grad.conv2d_weight(x64, reference.weight.shape, grad_out.double(), stride=stride,
                                                  padding=1)
    expected_grad_x = torch.nn.grad.conv2d_input(x64.shape, reference.weight.double(), grad_out.double(),
                                                 stride=stride, padding=1)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad.double(), expected_grad_w, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), expected_grad_x, rtol=1e-5, atol=1e-4)
