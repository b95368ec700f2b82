"""Selective Kernels' compiled stream mix and spatial mean (kernels/sk_mix.cpp): checked against float64, and the
module's outputs and gradients with them against its PyTorch formulation."""

from __future__ import annotations

import importlib

import pytest
import torch

from conftest import channels_last
from simclrv2.models import SelectiveKernelConv

skm = importlib.import_module("simclrv2.models.selective_kernel")

# (batch, C, H, W): C not a multiple of the vector width; 9x9 = 81 pixels spans three of the kernel's row blocks
SHAPES = [(3, 20, 7, 5), (2, 16, 9, 9), (1, 8, 1, 1)]


def _inputs(shape, dtype, seed=0):
    batch, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    streams = channels_last(torch.randn(batch, 2 * c, h, w, generator=gen).to(dtype))
    gate = torch.rand(batch, 2, c, generator=gen).softmax(dim=1)
    grad = channels_last(torch.randn(batch, c, h, w, generator=gen).to(dtype))
    return streams, gate, grad


def _reference(streams, gate, grad):
    """Output, streams' gradient and gate's gradient of the mix in float64."""
    s = streams.double().requires_grad_()
    g = gate.double().requires_grad_()
    pair = s.unflatten(1, (2, -1))
    out = pair[:, 0] * g[:, 0, :, None, None] + pair[:, 1] * g[:, 1, :, None, None]
    out.backward(grad.double())
    return out.detach(), s.grad, g.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_mix_and_its_gradients_match_float64(kernels, shape, dtype):
    streams, gate, grad = _inputs(shape, dtype)
    flat_gate = gate.flatten(1).contiguous()
    out = kernels.sk_mix_forward(streams, flat_gate)
    grad_streams, grad_gate = kernels.sk_mix_backward(grad, streams, flat_gate)
    want_out, want_streams, want_gate = _reference(streams, gate, grad)
    assert out.dtype == grad_streams.dtype == dtype and grad_gate.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad_streams.is_contiguous(memory_format=torch.channels_last)
    # one rounding to the storage dtype from float32 arithmetic
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 2 ** -8}
    torch.testing.assert_close(out.double(), want_out, **tol)
    torch.testing.assert_close(grad_streams.double(), want_streams, **tol)
    # the gate's gradient stays float32, summed over pixels from the stored values
    torch.testing.assert_close(grad_gate.double(), want_gate.flatten(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_spatial_mean_matches_float64(kernels, dtype):
    x = channels_last(torch.randn(3, 40, 9, 7).to(dtype) + 5)  # a large mean: float sums must not drift
    got = kernels.spatial_mean(x)
    assert got.dtype == torch.float32 and got.shape == (3, 40)
    torch.testing.assert_close(got.double(), x.double().mean(dim=(2, 3)), atol=1e-6, rtol=1e-6)


def test_the_compiled_mix_is_the_same_every_run(kernels):
    streams, gate, grad = _inputs((4, 16, 12, 12), torch.float32)
    flat_gate = gate.flatten(1).contiguous()
    first = kernels.sk_mix_backward(grad, streams, flat_gate)
    second = kernels.sk_mix_backward(grad, streams, flat_gate)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_compiled_mix_refuses_what_it_cannot_read(kernels):
    streams, gate, grad = _inputs((2, 8, 4, 4), torch.float32)
    flat_gate = gate.flatten(1).contiguous()
    with pytest.raises(RuntimeError, match="channels_last"):
        kernels.sk_mix_forward(streams.contiguous(), flat_gate)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.sk_mix_forward(streams.double(), flat_gate)
    with pytest.raises(RuntimeError, match=r"\(N, 2C\)"):
        kernels.sk_mix_forward(streams, flat_gate[:, :8].contiguous())
    with pytest.raises(RuntimeError, match="even number"):
        kernels.sk_mix_forward(channels_last(torch.randn(2, 7, 4, 4)), torch.rand(2, 7))
    with pytest.raises(RuntimeError, match=r"\(N, C, H, W\)"):
        kernels.sk_mix_backward(channels_last(torch.randn(2, 8, 3, 4)), streams, flat_gate)
    with pytest.raises(RuntimeError, match="spatial_mean: the input must be"):
        kernels.spatial_mean(torch.randn(2, 3, 4, 4).bfloat16())


def _module_grads(sk, x, upstream, precision):
    sk.zero_grad(set_to_none=True)
    x = x.detach().to(next(sk.parameters()).dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = sk(x)
    (out * upstream.to(out.dtype)).sum().backward()
    return [out.detach().double(), x.grad.double()] + [p.grad.double() for p in sk.parameters()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_selective_kernels_train_as_accurately_with_the_compiled_mix(fused, monkeypatch, precision):
    """The module with the compiled mix and mean against its PyTorch formulation, both against the module in float64
    (which the kernels leave to PyTorch): outputs and gradients as close to it, and the kernel called once."""
    torch.manual_seed(0)
    sk = SelectiveKernelConv(16, 16, 1, 0.0625).to(memory_format=torch.channels_last)
    x = channels_last(torch.randn(6, 16, 9, 9))
    upstream = torch.randn(6, 16, 9, 9)
    calls = []
    mix = fused.sk_mix_forward
    monkeypatch.setattr(fused, "sk_mix_forward", lambda *a: calls.append(a[0].shape) or mix(*a), raising=False)
    compiled = _module_grads(sk, x, upstream, precision)
    assert calls == [(6, 32, 9, 9)]
    monkeypatch.setattr(skm, "COMPILED_MIX", False)
    plain = _module_grads(sk, x, upstream, precision)
    exact = _module_grads(sk.double(), x, upstream, "fp32")
    assert calls == [(6, 32, 9, 9)]  # neither the PyTorch formulation nor float64 called the kernel
    errors, pytorch_errors = [], []
    for got, pytorch, want in zip(compiled, plain, exact, strict=True):
        scale = want.abs().max().item()
        errors.append((got - want).abs().max().item() / scale)
        pytorch_errors.append((pytorch - want).abs().max().item() / scale)
    if precision == "fp32":
        assert all(e <= 2 * p + 1e-6 and e <= 1e-5 for e, p in zip(errors, pytorch_errors, strict=True)), errors
    else:  # bf16 rounding through BatchNorm's backward: each tensor's error moves either way from path to path
        assert sum(errors) <= 1.5 * sum(pytorch_errors) and max(errors) <= 0.2, (errors, pytorch_errors)


def test_the_compiled_mix_is_left_out_where_it_does_not_apply(fused, monkeypatch):
    """float64, NCHW streams and torch.compile's tracing run the PyTorch formulation (a call into the extension would
    break the compiled graph)."""
    streams = channels_last(torch.randn(2, 8, 3, 3))
    assert skm._mix_kernels_for(streams) is fused
    assert skm._mix_kernels_for(streams.double()) is None
    assert skm._mix_kernels_for(streams.contiguous()) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert skm._mix_kernels_for(streams) is None


def test_a_bf16_network_mixes_with_the_compiled_kernels_without_autocast(fused):
    """A network cast to bf16 (its gate's weights bf16 too) reads the compiled mean in its own dtype."""
    torch.manual_seed(0)
    sk = SelectiveKernelConv(16, 16, 1, 0.0625).to(memory_format=torch.channels_last)
    x = channels_last(torch.randn(4, 16, 7, 7))
    want = sk(x)
    got = sk.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.detach(), atol=0.1, rtol=0.05)
