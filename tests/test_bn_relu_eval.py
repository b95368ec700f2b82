"""Evaluation-mode BatchNorm → (+ shortcut) → ReLU as one kernel pass (simclrv2.models.bn_relu, ``bn_relu_eval``):
as close to a float64 reference as PyTorch's ops, the same outputs for whole encoders, and PyTorch's ops wherever a
gradient is needed or a graph is being traced."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simclrv2.models import bn_relu, cpu_kernels
from simclrv2.models.bn_relu import FusingSequential, batch_norm, batch_norm_relu
from simclrv2.models.resnet import resnet

CL = torch.channels_last


def _eval_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    """An evaluation-mode BatchNorm with running statistics and affine parameters far from their defaults."""
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) * 3 + 0.1)
        bn.weight.copy_(torch.rand(channels, generator=generator) * 3 - 1.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
    return bn.eval()


def _reference(x, bn, residual, relu):
    y = F.batch_norm(x.double(), bn.running_mean.double(), bn.running_var.double(), bn.weight.double(),
                     bn.bias.double(), False, 0.0, bn.eps)
    if residual is not None:
        y = y + residual.double()
    return y.relu() if relu else y


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


class _EvalSpy:
    """Stands for the kernels module, recording each evaluation-mode call's input shape."""

    def __init__(self, kernels, calls: list):
        self._kernels, self._calls = kernels, calls

    def __getattr__(self, name):
        return getattr(self._kernels, name)

    def bn_relu_eval(self, x, *args):
        self._calls.append(tuple(x.shape))
        return self._kernels.bn_relu_eval(x, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("with_residual", "relu"), [(False, True), (True, True), (False, False)])
# 24 and 3 channels run the loops over a run-time channel count; 16 to 512 their compile-time ones
@pytest.mark.parametrize("shape", [(6, 24, 5, 5), (3, 3, 4, 4), (5, 16, 6, 6), (4, 64, 5, 3), (2, 512, 2, 2)])
def test_evaluation_matches_float64_at_least_as_well_as_pytorch(kernels, unfused, dtype, with_residual, relu, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=CL)
    residual = torch.randn(shape).to(dtype).contiguous(memory_format=CL) if with_residual else None
    bn = _eval_bn(shape[1], seed=1)
    expected = _reference(x, bn, residual, relu)
    outputs = {}
    with torch.no_grad():
        for name, active in (("fused", kernels), ("pytorch", None)):
            cpu_kernels._KERNELS["active"] = active
            outputs[name] = batch_norm_relu(x, bn, residual) if relu else batch_norm(x, bn)
            cpu_kernels._KERNELS.pop("active")
    fused, pytorch = outputs["fused"], outputs["pytorch"]
    assert fused.dtype == dtype and fused.is_contiguous(memory_format=CL)
    if dtype == torch.float32:  # the same float operations as PyTorch's evaluation BatchNorm
        torch.testing.assert_close(fused, pytorch, rtol=1e-6, atol=1e-6)
    else:  # one rounding to bf16 instead of PyTorch's two with a residual: within one bf16 step of PyTorch
        assert _relative_error(fused, expected) <= max(1.01 * _relative_error(pytorch, expected), 1e-3)
        torch.testing.assert_close(fused.float(), pytorch.float(), rtol=2 ** -7, atol=2 ** -7)


def test_a_nan_in_the_input_stays_nan(fused):
    x = torch.randn(2, 16, 3, 3).contiguous(memory_format=CL)
    x[1, 3, 0, 0] = float("nan")
    with torch.no_grad():
        out = batch_norm_relu(x, _eval_bn(16, seed=2))
    assert out.isnan().sum() == 1 and out[1, 3, 0, 0].isnan()


def test_the_eval_kernel_refuses_mismatched_statistics_and_a_residual_without_relu(fused):
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=CL)
    ones, zeros = torch.ones(4), torch.zeros(4)
    with pytest.raises(RuntimeError, match="one value per channel"):
        fused.bn_relu_eval(x, ones, zeros, torch.zeros(5), ones, None, 1e-5, True)
    with pytest.raises(RuntimeError, match="relu=true"):
        fused.bn_relu_eval(x, ones, zeros, zeros, ones, x.clone(), 1e-5, False)


def test_fusing_sequential_in_evaluation_runs_one_kernel_call_per_batchnorm(fused, monkeypatch):
    calls = []
    monkeypatch.setattr(bn_relu, "active_kernels", lambda: _EvalSpy(fused, calls))
    block = FusingSequential(nn.Conv2d(3, 8, 3, padding=1), _eval_bn(8, seed=3), nn.ReLU(inplace=True),
                             nn.Conv2d(8, 8, 3, padding=1), _eval_bn(8, seed=4), nn.Identity())
    block = block.to(memory_format=CL).eval()
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=CL)
    shortcut = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = nn.Sequential(*block)(x)  # plain Sequential: the same modules, PyTorch's ops
        got = block(x)
        assert calls == [(2, 8, 6, 6)] * 2
        block_without_tail = FusingSequential(*list(block)[:-1])
        got_add = block_without_tail.forward_add_relu(x, shortcut)
        expected_add = torch.relu(nn.Sequential(*block_without_tail)(x) + shortcut)
    assert len(calls) == 4
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_add, expected_add, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["input_needs_grad", "weight_needs_grad", "training", "traced", "nchw"])
def test_evaluation_falls_back_where_a_gradient_or_a_graph_is_wanted(fused, monkeypatch, case):
    """An evaluation-mode forward whose gradient is wanted (a frozen-BN fine-tune), a traced export and an NCHW
    tensor run PyTorch's ops; the gradients then flow as PyTorch gives them."""
    calls = []
    monkeypatch.setattr(bn_relu, "active_kernels", lambda: _EvalSpy(fused, calls))
    bn = _eval_bn(4, seed=5)
    bn.weight.requires_grad_(case == "weight_needs_grad")
    bn.bias.requires_grad_(case == "weight_needs_grad")
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=CL)
    if case == "input_needs_grad":
        x.requires_grad_()
    if case == "nchw":
        x = torch.randn(2, 4, 5, 5)
    reference_bn = copy.deepcopy(bn)
    if case == "training":
        bn.train()
        reference_bn.train()
    if case == "traced":
        # torch.jit.trace is deprecated, but users still trace for TorchScript export: the fallback must hold there
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated", DeprecationWarning)
            traced = torch.jit.trace(lambda t: batch_norm_relu(t, bn), (x,), check_trace=False)
        assert "aten::batch_norm" in str(traced.graph)  # PyTorch's op recorded, not an opaque kernel call
        got = traced(x)
    else:
        got = batch_norm_relu(x, bn)
    assert calls == []
    torch.testing.assert_close(got, torch.relu(reference_bn(x)))
    if case == "input_needs_grad":
        got.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("depth", "sk_ratio"), [(18, 0.0), (18, 0.0625), (50, 0.0)])
def test_an_encoder_in_evaluation_gives_the_same_features_fused_and_unfused(kernels, unfused, dtype, depth,
                                                                            sk_ratio, monkeypatch):
    """Whole encoders (BasicBlock, SK, Bottleneck; every block's residual contributes) under no_grad and bf16
    autocast, as the kNN monitor and the distillation teacher run them, with the kernel taken for every
    BatchNorm."""
    torch.manual_seed(6)
    model = resnet(depth, 0.25, sk_ratio=sk_ratio, cifar_stem=True, in_channels=1).to(memory_format=CL)
    for index, module in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        module.load_state_dict(_eval_bn(module.num_features, seed=100 + index).state_dict())
    model.eval()
    x = torch.rand(4, 1, 28, 28).contiguous(memory_format=CL)
    calls = []
    outputs = []
    for active in (kernels, None):
        cpu_kernels._KERNELS["active"] = active
        monkeypatch.setattr(bn_relu, "active_kernels",
                            (lambda: _EvalSpy(kernels, calls)) if active is not None else (lambda: None))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            outputs.append(model(x).float())
        cpu_kernels._KERNELS.pop("active")
    # every BatchNorm but those of the SK gates, which act on (B, C, 1, 1) pooled context in a plain Sequential
    assert len(calls) == sum(type(m) is nn.BatchNorm2d and ".gate." not in name for name, m in model.named_modules())
    fused_out, pytorch_out = outputs
    scale = pytorch_out.abs().max().item()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2  # bf16: a few roundings of each layer apart
    assert (fused_out - pytorch_out).abs().max().item() <= tolerance * scale
