"""The encoder's Conv2d module: any mix of GEMM and oneDNN passes gives torch.nn.Conv2d's outputs and gradients
(fp32 exactly, bf16 to oneDNN's accuracy), it keeps only what backward reads, and a bf16 ResNet step stays as
accurate as with oneDNN alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simclrv2.models import conv, conv_rules
from simclrv2.models.conv import Conv2d
from simclrv2.models.resnet import resnet


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
