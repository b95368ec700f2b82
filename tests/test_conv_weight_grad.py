"""The encoder's Conv2d: on small CPU maps its weight gradient is one GEMM; everything it computes must equal
torch.nn.Conv2d's (checked against a float64 reference), and it must fall back where the GEMM does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclrv2.models import conv
from simclrv2.models.conv import Conv2d, weight_grad_by_gemm
from simclrv2.models.resnet import resnet


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"),
                         [(3, 1, 1, 4), (3, 2, 1, 8), (3, 2, 1, 7), (1, 2, 0, 8), (3, 1, 0, 5), (3, 1, 1, 9)])
def test_weight_grad_by_gemm_equals_the_convolution_weight_gradient(kernel, stride, padding, size):
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    weight = torch.randn(7, 5, kernel, kernel, dtype=torch.float64)
    out = nn.functional.conv2d(x, weight, stride=stride, padding=padding)
    grad_out = torch.randn_like(out)
    expected = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=stride, padding=padding)
    got = weight_grad_by_gemm(x, grad_out, kernel, stride, padding)
    assert got.shape == weight.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    channels_last = weight_grad_by_gemm(x.to(memory_format=torch.channels_last),
                                        grad_out.to(memory_format=torch.channels_last), kernel, stride, padding)
    torch.testing.assert_close(channels_last, expected, rtol=1e-10, atol=1e-10)


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


@pytest.mark.parametrize("stride", [1, 2])
def test_the_gemm_function_gives_nn_conv2d_outputs_and_gradients_in_fp32(stride):
    reference, ours = _pair(stride)
    x = torch.randn(6, 16, 4 * stride, 4 * stride).to(memory_format=torch.channels_last)
    grad_out = torch.randn(6, 24, 4, 4)
    y_ref, gx_ref, gw_ref = _grads(reference, x, grad_out, autocast=False)
    x_ours = x.clone().requires_grad_()
    y = conv._GemmWeightGradConv.apply(x_ours, ours.weight, stride, 1)
    y.backward(grad_out)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x_ours.grad, gx_ref)
    torch.testing.assert_close(ours.weight.grad, gw_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_under_bf16_autocast_small_maps_take_the_gemm_with_autocast_conv2d_dtypes_and_values(stride):
    reference, ours = _pair(stride)
    x, grad_out = torch.randn(8, 16, 4 * stride, 4 * stride), torch.randn(8, 24, 4, 4)
    y_ref, gx_ref, gw_ref = _grads(reference, x, grad_out)
    y, gx, gw = _grads(ours, x, grad_out)
    assert y.grad_fn.name() == "_GemmWeightGradConvBackward"
    assert (y.dtype, gx.dtype, gw.dtype) == (y_ref.dtype, gx_ref.dtype, gw_ref.dtype) == \
        (torch.bfloat16, torch.float32, torch.float32)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)  # the input gradient is oneDNN's in both
    exact = torch.nn.grad.conv2d_weight(x.double(), reference.weight.shape, grad_out.double(), stride=stride,
                                        padding=1)
    scale = exact.abs().max()
    # both round fp32 sums of bf16 products to bf16: within a few bf16 steps of the float64 value
    assert ((gw.double() - exact).abs().max() / scale) < 2e-2
    assert ((gw_ref.double() - exact).abs().max() / scale) < 2e-2


def test_bf16_modules_take_the_gemm_without_autocast():
    _, ours = _pair()
    ours = ours.to(torch.bfloat16)
    y = ours(torch.randn(2, 16, 4, 4, dtype=torch.bfloat16))
    assert y.grad_fn.name() == "_GemmWeightGradConvBackward" and y.dtype == torch.bfloat16


def test_fp32_large_maps_no_grad_and_frozen_weights_fall_back_to_nn_conv2d():
    _, ours = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(2, 16, 8, 8)).grad_fn.name() == "ConvolutionBackward0"  # 64 output pixels
        with torch.no_grad():
            assert ours(torch.randn(2, 16, 4, 4)).grad_fn is None
    assert ours(torch.randn(2, 16, 4, 4)).grad_fn.name() == "ConvolutionBackward0"  # fp32: oneDNN is as fast
    ours.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(2, 16, 4, 4, requires_grad=True)).grad_fn.name() == "ConvolutionBackward0"


def test_the_threshold_is_read_at_call_time(monkeypatch):
    _, ours = _pair()
    monkeypatch.setattr(conv, "GEMM_WEIGHT_GRAD_MAX_AREA", 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(2, 16, 4, 4)).grad_fn.name() == "ConvolutionBackward0"


def test_a_bf16_resnet_step_gives_the_gradients_it_gives_with_nn_conv2d(monkeypatch):
    """The whole encoder at 32 px under bf16 autocast (its last stage works on 4x4 maps): every input gradient is
    oneDNN's in both, so only the last stage's weight gradients may differ, by bf16 rounding."""
    def gradients() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = resnet(18, width_multiplier=0.25, cifar_stem=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(4, 3, 32, 32))
        out.float().square().sum().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    with_gemm = gradients()
    monkeypatch.setattr(conv, "GEMM_WEIGHT_GRAD_MAX_AREA", 0)
    without = gradients()
    assert with_gemm.keys() == without.keys()
    differ = set()
    for name in with_gemm:
        if not torch.equal(with_gemm[name], without[name]):
            differ.add(name)
            scale = without[name].abs().max()
            assert (with_gemm[name] - without[name]).abs().max() <= 2e-2 * scale, name
    assert differ and all(name.startswith("stages.3.") and name.endswith("weight") for name in differ)
