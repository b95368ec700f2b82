"""The encoder's Conv2d: on small CPU maps in bf16 its passes are GEMMs over the input's patches; everything it
computes must equal torch.nn.Conv2d's (checked against float64 references), and it must fall back where the
GEMMs do not apply."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simclrv2.models import conv, conv_gemm, conv_rules
from simclrv2.models.conv import Conv2d
from simclrv2.models.conv_gemm import conv_by_gemm, input_grad_by_gemm, input_grad_by_phases, weight_grad_by_gemm
from simclrv2.models.conv_rules import gemm_passes
from simclrv2.models.resnet import resnet

GEOMETRIES = [(3, 1, 1, 4), (3, 2, 1, 8), (3, 2, 1, 7), (1, 2, 0, 8), (3, 1, 0, 5), (3, 1, 1, 9), (1, 1, 0, 3)]


def _layouts(*tensors: torch.Tensor):
    yield tensors
    yield tuple(t.contiguous(memory_format=torch.channels_last) for t in tensors)


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), GEOMETRIES)
def test_conv_by_gemm_equals_conv2d_and_is_channels_last(kernel, stride, padding, size):
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    weight = torch.randn(7, 5, kernel, kernel, dtype=torch.float64)
    expected = F.conv2d(x, weight, stride=stride, padding=padding)
    for x_, weight_ in _layouts(x, weight):
        got, cols = conv_by_gemm(x_, weight_, stride, padding)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert cols.shape == (3 * expected.shape[-2] * expected.shape[-1], kernel * kernel * 5)


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), GEOMETRIES)
def test_weight_grad_by_gemm_equals_the_convolution_weight_gradient(kernel, stride, padding, size):
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    weight = torch.randn(7, 5, kernel, kernel, dtype=torch.float64)
    grad_out = torch.randn_like(F.conv2d(x, weight, stride=stride, padding=padding))
    expected = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=stride, padding=padding)
    for x_, grad_out_ in _layouts(x, grad_out):
        got = weight_grad_by_gemm(x_, grad_out_, kernel, stride, padding)
        assert got.shape == weight.shape
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"),
                         GEOMETRIES + [(3, 2, 1, 9), (5, 2, 2, 9), (3, 3, 1, 10), (3, 2, 0, 9), (1, 2, 0, 1)])
def test_input_grad_by_phases_equals_the_convolution_input_gradient(kernel, stride, padding, size):
    """Every input pixel is the sum of the taps that reach it, zero where none does (1x1 at stride 2)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    weight = torch.randn(7, 5, kernel, kernel, dtype=torch.float64)
    grad_out = torch.randn_like(F.conv2d(x, weight, stride=stride, padding=padding))
    expected = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride=stride, padding=padding)
    for grad_out_, weight_ in _layouts(grad_out, weight):
        got = input_grad_by_phases(grad_out_, weight_, stride, padding, (size, size))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("kernel", "padding", "size"), [(3, 1, 4), (3, 0, 5), (1, 0, 3), (3, 1, 9)])
def test_input_grad_by_gemm_equals_the_convolution_input_gradient(kernel, padding, size):
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    weight = torch.randn(7, 5, kernel, kernel, dtype=torch.float64)
    grad_out = torch.randn_like(F.conv2d(x, weight, padding=padding))
    expected = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, padding=padding)
    for grad_out_, weight_ in _layouts(grad_out, weight):
        torch.testing.assert_close(input_grad_by_gemm(grad_out_, weight_, padding), expected, rtol=1e-10,
                                   atol=1e-10)


# (channels, height, width, kernel, stride, padding): the encoder's shapes, a one-channel stem, odd and
# non-square maps, a 5x5 kernel with two rows of padding and none.
PATCH_GEOMETRIES = [(16, 4, 4, 3, 1, 1), (8, 7, 7, 3, 2, 1), (1, 9, 6, 3, 1, 1), (3, 5, 8, 5, 1, 2),
                    (5, 6, 6, 1, 2, 0), (4, 5, 5, 3, 1, 0), (2, 3, 3, 3, 1, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("channels", "height", "width", "kernel", "stride", "padding"), PATCH_GEOMETRIES)
def test_the_compiled_patches_are_pytorchs_patches(kernels, unfused, dtype, channels, height, width, kernel, stride,
                                                   padding):
    x = torch.randn(3, channels, height, width).to(dtype).contiguous(memory_format=torch.channels_last)
    expected = conv_gemm.patches(x, kernel, stride, padding)  # the kernels are off: PyTorch's views and copy
    got = kernels.patches(x, kernel, stride, padding)
    assert got.is_contiguous() and got.dtype == dtype
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(70, 33), (1, 5), (64, 64), (130, 9)])
def test_the_compiled_transpose_is_pytorchs(kernels, dtype, shape):
    a = torch.randn(shape).to(dtype)
    got = kernels.transpose(a)
    assert got.is_contiguous() and torch.equal(got, a.t())


def test_the_compiled_kernels_refuse_what_they_cannot_lay_out(kernels):
    with pytest.raises(RuntimeError, match="channels_last"):
        kernels.patches(torch.randn(2, 3, 4, 4), 3, 1, 1)  # NCHW
    with pytest.raises(RuntimeError, match="padding"):
        kernels.patches(torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last), 3, 1, 3)
    with pytest.raises(RuntimeError, match="2-D"):
        kernels.transpose(torch.randn(4, 5).t())


def test_the_module_uses_the_compiled_patches_and_transpose_where_they_are_on(fused, monkeypatch):
    calls = []
    spy = type("Spy", (), {"patches": lambda self, *a: calls.append("patches") or fused.patches(*a),
                           "transpose": lambda self, a: calls.append("transpose") or fused.transpose(a)})()
    monkeypatch.setattr(conv_gemm, "active_kernels", lambda: spy)
    x = torch.randn(2, 16, 4, 4).bfloat16().contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 24, 4, 4).bfloat16().contiguous(memory_format=torch.channels_last)
    conv_gemm.weight_grad_by_gemm(x, grad, 3, 1, 1)
    assert calls == ["patches", "transpose"]
    conv_gemm.patches(x.contiguous(), 3, 1, 1)  # NCHW, and float64 below: PyTorch's copies
    conv_gemm.patches(x.double().contiguous(memory_format=torch.channels_last), 3, 1, 1)
    assert calls == ["patches", "transpose"]


def test_a_one_channel_stem_runs_forward_and_weight_gradient_as_gemms_in_every_dtype_on_every_cpu(monkeypatch):
    """oneDNN's kernels for one input channel measured 3-5x slower than the GEMMs on AMX, AVX-512-BF16 and AVX2."""
    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", False)
    stem = {"forward", "backward-weights"}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert gemm_passes(1, 784, 1, 64, dtype) == gemm_passes(1, 1024, 1, 128, dtype) == stem
    assert gemm_passes(1, 784, 1, 16, torch.float32) == frozenset()  # few outputs: measured even
    assert gemm_passes(2, 196, 1, 64, torch.float32) == frozenset()  # only stride 1 was measured
    assert gemm_passes(1, 784, 3, 64, torch.float32) == frozenset()  # RGB: oneDNN was faster
    assert gemm_passes(1, 784, 1, 64, torch.float64) == frozenset()


@pytest.mark.parametrize("compiled", [False, True])
def test_a_one_channel_fp32_stem_equals_nn_conv2d(request, compiled):
    request.getfixturevalue("fused" if compiled else "unfused")
    torch.manual_seed(0)
    reference = nn.Conv2d(1, 64, 3, padding=1, bias=False)
    ours = Conv2d(1, 64, 3, padding=1, bias=False)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(6, 1, 9, 7).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(6, 64, 9, 7)
    y = ours(x)
    assert y.grad_fn.name() == "_CpuConvBackward" and y.grad_fn.passes == {"forward", "backward-weights"}
    y.backward(grad_out)
    expected = F.conv2d(x.double(), reference.weight.double(), padding=1)
    expected_grad = torch.nn.grad.conv2d_weight(x.double(), reference.weight.shape, grad_out.double(), padding=1)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad.double(), expected_grad, rtol=1e-5, atol=1e-4)


@pytest.fixture
def amx(monkeypatch):
    """A CPU whose oneDNN runs AMX, where the rules apply (CI machines may lack it)."""
    monkeypatch.setattr(conv_rules, "ONEDNN_USES_AMX", True)


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


@pytest.fixture
def narrow_rules(amx, monkeypatch):
    """The default rules without their channel minimums, so that small test modules take every path."""
    monkeypatch.setattr(conv_rules, "GEMM_RULES", tuple((name, area, 1) for name, area, _ in conv_rules.GEMM_RULES))


def _pair(stride: int = 1) -> tuple[nn.Conv2d, Conv2d]:
    torch.manual_seed(1)
    reference = nn.Conv2d(16, 24, 3, stride=stride, padding=1, bias=False)
    ours = Conv2d(16, 24, 3, stride=stride, padding=1, bias=False)
    ours.load_state_dict(reference.state_dict())  # same parameters, same checkpoints
    return reference, ours


def _grads(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, autocast: bool = True):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    y.backward(grad_out)
    return y, x.grad, module.weight.grad


MIXES = [{"forward", "backward-data", "backward-weights"}, {"forward", "backward-weights"},
         {"forward", "backward-data"}, {"forward"}, {"backward-weights"}, {"backward-data"}, set()]


@pytest.mark.parametrize(("stride", "passes"), [(1, p) for p in MIXES] + [(2, p) for p in MIXES])
def test_every_mix_of_gemm_and_onednn_passes_gives_nn_conv2d_outputs_and_gradients_in_fp32(stride, passes):
    reference, ours = _pair(stride)
    x = torch.randn(6, 16, 4 * stride, 4 * stride).to(memory_format=torch.channels_last)
    grad_out = torch.randn(6, 24, 4, 4)
    y_ref, gx_ref, gw_ref = _grads(reference, x, grad_out, autocast=False)
    x_ours = x.clone().requires_grad_()
    y = conv._CpuConv.apply(x_ours, ours.weight, stride, 1, frozenset(passes))
    y.backward(grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_ours.grad, gx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, gw_ref, rtol=1e-5, atol=1e-5)


def _relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return ((got.double() - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize(("stride", "out_size", "passes"),
                         [(1, 4, {"forward", "backward-data", "backward-weights"}),
                          (2, 4, {"forward", "backward-data", "backward-weights"}),
                          (1, 7, {"backward-weights"}), (2, 7, {"backward-weights"})])
def test_under_bf16_autocast_small_maps_take_the_gemms_with_autocast_dtypes_and_oneDNN_accuracy(
        narrow_rules, stride, out_size, passes):
    reference, ours = _pair(stride)
    size = out_size * stride - (stride - 1) * (out_size % 2 == 1)  # 7 px out of 13 px at stride 2
    x = torch.randn(8, 16, size, size)
    grad_out = torch.randn(8, 24, out_size, out_size)
    y_ref, gx_ref, gw_ref = _grads(reference, x, grad_out)
    y, gx, gw = _grads(ours, x, grad_out)
    assert y.grad_fn.name() == "_CpuConvBackward" and y.grad_fn.passes == passes
    assert (y.dtype, gx.dtype, gw.dtype) == (y_ref.dtype, gx_ref.dtype, gw_ref.dtype) == \
        (torch.bfloat16, torch.float32, torch.float32)
    x64, w64, g64 = x.double(), reference.weight.double(), grad_out.double()
    exact = {"y": F.conv2d(x64, w64, stride=stride, padding=1),
             "gx": torch.nn.grad.conv2d_input(x.shape, w64, g64, stride=stride, padding=1),
             "gw": torch.nn.grad.conv2d_weight(x64, w64.shape, g64, stride=stride, padding=1)}
    # oneDNN and the GEMMs both round fp32 sums of bf16 products once: within a few bf16 steps of float64
    for name, got, theirs in (("y", y, y_ref), ("gx", gx, gx_ref), ("gw", gw, gw_ref)):
        assert _relative_error(got, exact[name]) < 2e-2, name
        assert _relative_error(theirs, exact[name]) < 2e-2, name


def test_bf16_modules_take_the_gemms_without_autocast(narrow_rules):
    _, ours = _pair()
    ours = ours.to(torch.bfloat16)
    y = ours(torch.randn(2, 16, 4, 4, dtype=torch.bfloat16))
    assert y.grad_fn.name() == "_CpuConvBackward" and y.dtype == torch.bfloat16


def test_only_passes_that_will_run_are_gemms_and_fp32_and_large_maps_are_nn_conv2d(narrow_rules):
    reference, ours = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(2, 16, 8, 8)).grad_fn.name() == "ConvolutionBackward0"  # 64 output pixels
        x = torch.randn(2, 16, 4, 4)
        with torch.no_grad():  # inference keeps the GEMM forward
            y = ours(x)
            assert y.grad_fn is None and y.dtype == torch.bfloat16
            torch.testing.assert_close(y, reference(x))
    assert ours(torch.randn(2, 16, 4, 4)).grad_fn.name() == "ConvolutionBackward0"  # fp32: oneDNN is as fast
    ours.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # a frozen weight needs no weight gradient: 7x7 maps had nothing else as a GEMM
        assert ours(torch.randn(2, 16, 7, 7, requires_grad=True)).grad_fn.name() == "ConvolutionBackward0"
        x = torch.randn(2, 16, 4, 4, requires_grad=True)
        y = ours(x)
        assert y.grad_fn.passes == {"forward", "backward-data"}
        assert [t is None for t in y.grad_fn.saved_tensors] == [True, False, True]  # no patches, no x: the weight
        y.float().sum().backward()
    assert x.grad is not None and ours.weight.grad is None


def test_the_gemm_forward_keeps_its_patches_for_backward_and_the_input_only_where_a_pass_reads_it(narrow_rules,
                                                                                                  monkeypatch):
    """Stride 1 with every pass a GEMM needs no input: x is not kept alive beside its (9x larger) patches."""
    _, ours = _pair(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(torch.randn(2, 16, 4, 4))
    assert [None if t is None else tuple(t.shape) for t in y.grad_fn.saved_tensors] == \
        [(2 * 16, 9 * 16), (24, 16, 3, 3), None]
    _, ours = _pair(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        every_pass_a_gemm = ours(torch.randn(2, 16, 8, 8, requires_grad=True))  # stride 2's input grad by phases
    assert every_pass_a_gemm.grad_fn.saved_tensors[2] is None
    monkeypatch.setattr(conv_rules, "GEMM_RULES",
                        tuple(r for r in conv_rules.GEMM_RULES if r[0] != "backward-data-strided"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(torch.randn(2, 16, 8, 8, requires_grad=True))  # oneDNN's input gradient reads x
        no_input_grad = ours(torch.randn(2, 16, 8, 8))  # the images of a first layer: x is not needed
    assert [None if t is None else tuple(t.shape) for t in y.grad_fn.saved_tensors] == \
        [(2 * 16, 9 * 16), (24, 16, 3, 3), (2, 16, 8, 8)]
    assert no_input_grad.grad_fn.saved_tensors[2] is None


@pytest.mark.parametrize(("in_channels", "compiled"), [(3, False), (1, True)])
def test_a_bf16_resnet_step_is_as_accurate_as_with_onednn_alone(narrow_rules, monkeypatch, request, in_channels,
                                                                compiled):
    """The whole encoder at 32 px under bf16 autocast (its last stages work on 8x8 and 4x4 maps, so every GEMM
    path runs): its gradients stay as close to float64's as those computed with oneDNN alone. With one input
    channel and the compiled kernels on (channels_last), the stem is a GEMM too and the patches and transposes
    are the kernels'."""
    request.getfixturevalue("fused" if compiled else "unfused")
    monkeypatch.setattr(conv_rules, "SINGLE_CHANNEL_MIN_OUT", 1)  # width 0.25's 16-channel stem takes it too
    layout = torch.channels_last if compiled else torch.contiguous_format

    def gradients(autocast: bool = True, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = resnet(18, width_multiplier=0.25, cifar_stem=True, in_channels=in_channels)
        for module in model.modules():  # residual BN scales start at zero, which would stop their branch's grads
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
        model = model.to(dtype).to(memory_format=layout)
        x = torch.randn(4, in_channels, 32, 32).to(dtype).contiguous(memory_format=layout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        # a fixed random direction: a sum of squares of BN outputs would be nearly constant, its gradient noise
        direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        (out.to(dtype) * direction).sum().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    exact = gradients(autocast=False, dtype=torch.float64)
    with_gemms = gradients()
    monkeypatch.setattr(conv_rules, "GEMM_RULES", ())
    monkeypatch.setattr(conv_rules, "GEMM_RULES_WITH_COMPILED_LAYOUTS", ())
    monkeypatch.setattr(conv_rules, "SINGLE_CHANNEL_MIN_OUT", 10**6)
    monkeypatch.setattr(conv_rules, "DIRECT_KERNELS", False)
    onednn = gradients()
    assert with_gemms.keys() == onednn.keys() == exact.keys()
    assert any(not torch.equal(with_gemms[n], onednn[n]) for n in exact)  # the GEMM paths did run
    trained = list(exact)
    ours = torch.tensor([((with_gemms[n].double() - exact[n]).norm() / exact[n].norm()).item() for n in trained])
    theirs = torch.tensor([((onednn[n].double() - exact[n]).norm() / exact[n].norm()).item() for n in trained])
    assert ours.mean() < 1.5 * theirs.mean(), (ours.mean(), theirs.mean())
