"""The convolution's passes as GEMMs over the input's patches (simclrv2.models.conv_gemm) and the compiled patch
and transpose kernels they use: each must equal torch.nn.Conv2d's, checked against float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simclrv2.models import conv_gemm, conv_rules
from simclrv2.models.conv import Conv2d
from simclrv2.models.conv_gemm import conv_by_gemm, input_grad_by_gemm, input_grad_by_phases, weight_grad_by_gemm
from simclrv2.models.conv_rules import gemm_passes

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
