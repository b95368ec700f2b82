"""The direct convolution kernels (kernels/direct_conv.cpp, kernels/stem_conv.cpp) and the encoder's Conv2d routing
passes to them: every result is checked against float64 references, and the routing against the shapes the
kernels cover."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import channels_last
from simclrv2.models import conv, conv_rules
from simclrv2.models.conv import Conv2d
from simclrv2.models.conv_rules import direct_passes
from simclrv2.models.resnet import resnet

# (height, width) against the row blocks (14 pixels on AVX-512, 6 on AVX2): whole blocks, a remainder, one pixel,
# fewer pixels than a block, both borders in one block
SIZES = [(28, 28), (14, 14), (5, 17), (1, 1), (3, 30), (2, 15), (4, 3)]


@pytest.fixture
def direct_kernels(kernels):
    if not kernels.has_direct_conv():
        pytest.skip("the 16-channel direct convolution is built on AVX2 and AVX-512 CPUs only")
    return kernels


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_the_16_channel_direct_conv_and_its_input_gradient_equal_float64s(direct_kernels, height, width):
    torch.manual_seed(0)
    x = torch.randn(3, 16, height, width)
    weight = torch.randn(16, 16, 3, 3)
    grad_out = torch.randn(3, 16, height, width)
    expected = F.conv2d(x.double(), weight.double(), padding=1)
    expected_grad = torch.nn.grad.conv2d_input(x.shape, weight.double(), grad_out.double(), padding=1)
    got = direct_kernels.direct_conv3x3(channels_last(x), weight, False)
    got_grad = direct_kernels.direct_conv3x3(channels_last(grad_out), weight, True)
    for result, reference in ((got, expected), (got_grad, expected_grad)):
        assert result.dtype == torch.float32 and result.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(result.double(), reference, rtol=1e-5, atol=1e-5)


def test_the_16_channel_direct_conv_refuses_what_it_does_not_compute(direct_kernels):
    weight = torch.randn(16, 16, 3, 3)
    for bad in (torch.randn(2, 16, 5, 5),  # NCHW
                channels_last(torch.randn(2, 8, 5, 5)),  # 8 channels
                channels_last(torch.randn(2, 16, 5, 5, dtype=torch.bfloat16))):
        with pytest.raises(RuntimeError, match="direct_conv3x3"):
            direct_kernels.direct_conv3x3(bad, weight, False)
    with pytest.raises(RuntimeError, match="weight"):
        direct_kernels.direct_conv3x3(channels_last(torch.randn(2, 16, 5, 5)), torch.randn(16, 16, 5, 5), False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("channels", "kernel", "padding"), [(16, 3, 1), (32, 3, 1), (64, 3, 1), (24, 3, 1),
                                                             (16, 5, 2), (16, 3, 0)])
def test_the_stem_kernels_equal_float64s_on_the_same_rounded_inputs(kernels, dtype, channels, kernel, padding):
    """Inputs rounded to ``dtype`` first, so the reference sees what the kernel sees; the forward's output is
    rounded once to ``dtype`` (half an ulp of bf16), the weight gradient is float32."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 11, 13).to(dtype)
    weight = torch.randn(channels, 1, kernel, kernel).to(dtype)
    expected = F.conv2d(x.double(), weight.double(), padding=padding)
    grad_out = torch.randn(expected.shape).to(dtype)
    expected_grad = torch.nn.grad.conv2d_weight(x.double(), weight.shape, grad_out.double(), padding=padding)
    got = kernels.stem_conv_forward(x, weight, padding)
    got_grad = kernels.stem_conv_weight_grad(x, grad_out, kernel, padding)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert got_grad.dtype == torch.float32 and got_grad.shape == weight.shape
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -8  # bf16: the output's own rounding
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got_grad.double(), expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_the_avx2_build_passes_these_tests_on_an_avx512_cpu(kernels):
    """The AVX2 code path (256-bit registers, blocks of 6 pixels) is compiled only where AVX-512 is absent: build it
    here with -mno-avx512f and run this file's tests against that build."""
    from simclrv2.models import cpu_kernels
    from simclrv2.provenance import cpu_kind

    if "avx512f" not in cpu_kind()["cpu_flags"]:
        pytest.skip("not an AVX-512 CPU: the native build already is the AVX2 one (or not x86)")
    env = {**os.environ, cpu_kernels.FLAGS_VARIABLE: "-mno-avx512f"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                             "not avx2_build"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]  # every kernel test ran


def test_the_stem_kernels_refuse_what_they_do_not_compute(kernels):
    with pytest.raises(RuntimeError, match="one-channel|\\(N, 1, H, W\\)"):
        kernels.stem_conv_forward(torch.randn(2, 3, 5, 5), torch.randn(16, 3, 3, 3), 1)
    with pytest.raises(RuntimeError, match="padding"):
        kernels.stem_conv_forward(torch.randn(2, 1, 5, 5), torch.randn(16, 1, 3, 3), 3)
    with pytest.raises(RuntimeError, match="shape"):
        kernels.stem_conv_weight_grad(torch.randn(2, 1, 5, 5), torch.randn(2, 16, 4, 4), 3, 1)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.stem_conv_forward(torch.randn(2, 1, 5, 5, dtype=torch.float64), torch.randn(16, 1, 3, 3), 1)


def _fake_kernels(vectors: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(has_direct_conv=lambda: vectors)


def test_the_direct_rules_cover_small_stems_and_fp32_16_channel_3x3_convolutions_only(monkeypatch):
    """On a CPU kind without Winograd rules (AVX-512 with full-width units): Winograd's rules take the 16-channel
    layer where oneDNN runs AVX2 (tests/test_winograd_conv.py)."""
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", False)
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", False)
    kernels = _fake_kernels(vectors=True)
    stem, conv16 = {"forward", "backward-weights"}, {"forward", "backward-data"}
    for dtype in (torch.float32, torch.bfloat16):
        assert direct_passes(1, 3, 1, 1, 16, dtype, kernels) == direct_passes(1, 5, 0, 1, 32, dtype, kernels) == stem
    assert direct_passes(1, 3, 1, 1, 64, torch.float32, kernels) == frozenset()  # from 64 outputs: the GEMMs
    assert direct_passes(1, 3, 1, 1, 16, torch.float16, kernels) == frozenset()
    assert direct_passes(2, 3, 1, 1, 16, torch.float32, kernels) == frozenset()
    assert direct_passes(1, 3, 1, 16, 16, torch.float32, kernels) == conv16
    assert direct_passes(1, 3, 1, 16, 16, torch.float32, _fake_kernels(vectors=False)) == frozenset()
    for other in ((1, 3, 1, 16, 16, torch.bfloat16), (1, 3, 1, 16, 32, torch.float32), (1, 1, 0, 16, 16, torch.float32),
                  (1, 3, 0, 16, 16, torch.float32), (2, 3, 1, 16, 16, torch.float32)):
        assert direct_passes(*other, kernels) == frozenset(), other
    assert direct_passes(1, 3, 1, 16, 16, torch.float32, None) == frozenset()  # kernels off
    monkeypatch.setattr(conv_rules, "DIRECT_KERNELS", False)
    assert direct_passes(1, 3, 1, 1, 16, torch.float32, kernels) == frozenset()


def _pair(in_channels: int, out_channels: int) -> tuple[nn.Conv2d, Conv2d]:
    torch.manual_seed(0)
    reference = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    ours = Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def test_the_module_runs_an_fp32_16_channel_conv_directly_and_equals_nn_conv2d(direct_kernels, fused, monkeypatch):
    monkeypatch.setattr(conv_rules, "FP32_AVX2_WINOGRAD_RULES", ())  # as where oneDNN does not run AVX2
    reference, ours = _pair(16, 16)
    ours = ours.to(memory_format=torch.channels_last)
    x = channels_last(torch.randn(3, 16, 9, 20)).requires_grad_()
    grad_out = torch.randn(3, 16, 9, 20)
    y = ours(x)
    assert y.grad_fn.name() == "_CpuConvBackward" and y.grad_fn.direct == {"forward", "backward-data"}
    assert y.grad_fn.passes == frozenset()
    assert [t is None for t in y.grad_fn.saved_tensors] == [True, False, False]  # x: oneDNN's weight gradient
    y.backward(grad_out)
    x64 = x.detach().double().requires_grad_()
    expected = F.conv2d(x64, reference.weight.double(), padding=1)
    expected.backward(grad_out.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    expected_grad = torch.nn.grad.conv2d_weight(x64.detach(), reference.weight.shape, grad_out.double(), padding=1)
    torch.testing.assert_close(ours.weight.grad.double(), expected_grad, rtol=1e-5, atol=1e-4)


def test_without_the_compiled_kernels_or_in_nchw_the_16_channel_conv_is_onednns(kernels, request):
    _, ours = _pair(16, 16)
    request.getfixturevalue("unfused")
    assert ours(channels_last(torch.randn(2, 16, 5, 5))).grad_fn.name() == "ConvolutionBackward0"
    request.getfixturevalue("fused")
    assert ours(torch.randn(2, 16, 5, 5)).grad_fn.name() == "ConvolutionBackward0"  # NCHW


@pytest.mark.parametrize("autocast", [False, True])
def test_the_module_runs_a_small_stem_directly_in_fp32_and_under_bf16_autocast(fused, autocast):
    reference, ours = _pair(1, 16)
    x = torch.randn(4, 1, 10, 12)
    grad_out = torch.randn(4, 16, 10, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = ours(x)
        expected = reference(x)
    assert y.grad_fn.name() == "_CpuConvBackward" and y.grad_fn.direct == {"forward", "backward-weights"}
    assert y.dtype == expected.dtype and y.is_contiguous(memory_format=torch.channels_last)
    y.backward(grad_out.to(y.dtype))
    expected.backward(grad_out.to(expected.dtype))
    tolerance = 1e-5 if not autocast else 1e-2
    torch.testing.assert_close(y.float(), expected.float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=tolerance, atol=tolerance * 20)


def test_an_fp32_width_quarter_resnet_step_with_the_direct_kernels_equals_onednns(direct_kernels, fused, monkeypatch):
    """The whole encoder with its one-channel stem and 16-channel first stage: with the direct kernels its outputs
    and gradients equal those computed with oneDNN alone, to float32 rounding."""

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = resnet(18, width_multiplier=0.25, cifar_stem=True, in_channels=1).to(memory_format=torch.channels_last)
        for module in model.modules():  # residual BN scales start at zero, which would stop their branch's grads
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
        out = model(torch.randn(6, 1, 16, 16))
        direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * direction).sum().backward()
        return out.detach(), {name: p.grad for name, p in model.named_parameters()}

    calls = []
    direct_forward = conv._direct_forward
    monkeypatch.setattr(conv, "_direct_forward", lambda *args: calls.append(args[0].shape[1]) or direct_forward(*args))
    # Winograd's rules would take the 16-channel layers where oneDNN runs AVX2, and the wider ones on AVX-512-BF16
    # without AMX (tests/test_winograd_conv.py)
    monkeypatch.setattr(conv_rules, "FP32_AVX2_WINOGRAD_RULES", ())
    monkeypatch.setattr(conv_rules, "FP32_AVX512_BF16_WINOGRAD_RULES", ())
    direct_out, direct_grads = step()
    assert calls == [1, 16, 16, 16, 16]  # the stem and the first stage's four convolutions
    monkeypatch.setattr(conv_rules, "DIRECT_KERNELS", False)
    onednn_out, onednn_grads = step()
    assert len(calls) == 5
    torch.testing.assert_close(direct_out, onednn_out, rtol=1e-4, atol=1e-5)
    assert direct_grads.keys() == onednn_grads.keys()
    for name in direct_grads:
        torch.testing.assert_close(direct_grads[name], onednn_grads[name], rtol=1e-3, atol=1e-4, msg=name)


def test_extra_compiler_flags_from_the_environment_make_another_build(monkeypatch):
    """SIMCLRV2_CPU_KERNEL_FLAGS (e.g. -mno-avx512f, to build the AVX2 code path on a newer CPU) reaches the compiler
    and names a separate build, so the host's own build is never loaded in its place."""
    from simclrv2.models import cpu_kernels

    monkeypatch.delenv(cpu_kernels.FLAGS_VARIABLE, raising=False)
    native, native_name = cpu_kernels._flags(), cpu_kernels._build_name()
    monkeypatch.setenv(cpu_kernels.FLAGS_VARIABLE, "-mno-avx512f -DEXAMPLE")
    assert cpu_kernels._flags() == [*native, "-mno-avx512f", "-DEXAMPLE"]
    assert cpu_kernels._build_name() != native_name
