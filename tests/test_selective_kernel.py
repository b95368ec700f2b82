"""Selective Kernels (docs/recipe.md#encoder): the two-stream softmax against a naive reference, its gradients,
layouts, autocast and compilation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.models import SelectiveKernelConv

SK = 0.0625  # the authors' recommended sk_ratio (docs/recipe.md#encoder)


def _train_bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def _naive_sk(sk: SelectiveKernelConv, x: torch.Tensor) -> torch.Tensor:
    """The docs/recipe.md#encoder SK description, one step a line, with an explicit two-way softmax."""
    c = sk.channels
    streams = F.relu(_train_bn(F.conv2d(x, sk.conv.weight, stride=sk.conv.stride, padding=1), sk.bn))
    first, second = streams[:, :c], streams[:, c:]
    context = (first + second).mean(dim=(2, 3), keepdim=True)
    hidden = F.relu(_train_bn(F.conv2d(context, sk.gate[0].weight), sk.gate[1]))
    logits = F.conv2d(hidden, sk.gate[3].weight)
    e_first, e_second = logits[:, :c].exp(), logits[:, c:].exp()
    return (first * e_first + second * e_second) / (e_first + e_second)


@pytest.mark.parametrize("stride", [1, 2])
def test_sk_conv_matches_a_naive_two_stream_softmax(stride: int) -> None:
    torch.manual_seed(0)
    sk = SelectiveKernelConv(3, 6, stride, SK)
    for p in sk.parameters():  # non-trivial γ, β and gate so both streams matter
        nn.init.normal_(p, std=0.5)
    x = torch.randn(4, 3, 9, 9)
    out = sk(x)
    assert out.shape == (4, 6, (9 - 1) // stride + 1, (9 - 1) // stride + 1)
    torch.testing.assert_close(out, _naive_sk(sk, x), atol=1e-5, rtol=1e-5)


def test_sk_conv_gradients_are_correct() -> None:
    torch.manual_seed(0)
    sk = SelectiveKernelConv(2, 2, 2, SK).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(sk, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_sk_conv_gradients_match_the_naive_reference(memory_format: torch.memory_format) -> None:
    """The mix and the gate's context have hand-written backward passes: every gradient, input and parameters,
    must equal autograd's through the naive description, in either memory layout."""
    torch.manual_seed(0)
    sk = SelectiveKernelConv(3, 6, 2, SK).double()  # double: a wrong term shows, float32's rounding does not
    for p in sk.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(4, 3, 9, 9, dtype=torch.double).to(memory_format=memory_format).requires_grad_()
    upstream = torch.randn(4, 6, 5, 5, dtype=torch.double)
    grads = torch.autograd.grad((sk(x) * upstream).sum(), [x, *sk.parameters()])
    expected = torch.autograd.grad((_naive_sk(sk, x) * upstream).sum(), [x, *sk.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_sk_conv_keeps_bf16_and_channels_last_under_autocast() -> None:
    """bf16 streams give a bf16 output, and channels_last stays channels_last both ways (a layout or dtype change
    would cost the next convolution a copy)."""
    torch.manual_seed(0)
    sk = SelectiveKernelConv(8, 8, 1, SK)
    x = torch.randn(4, 8, 7, 7).to(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sk(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    out.float().square().sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), sk(x.detach()), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("kernels_on", [False, True])
def test_sk_conv_compiles_as_one_graph_with_the_same_gradients(request, kernels_on: bool) -> None:
    """torch.compile (run.compile) traces the hand-written backward passes too: no graph break, same numbers. With
    the compiled CPU kernels on, eager mixes the streams with them and the traced graph by PyTorch's ops (a call
    into the extension would break it): the same numbers to float32's rounding, which BatchNorm's backward
    amplifies."""
    request.getfixturevalue("fused" if kernels_on else "unfused")
    torch.manual_seed(0)
    sk = SelectiveKernelConv(4, 6, 1, SK)
    x = torch.randn(3, 4, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    eager = torch.autograd.grad(sk(x).square().sum(), [x, *sk.parameters()])
    compiled = torch.compile(sk, backend="aot_eager", fullgraph=True)
    try:
        traced = torch.autograd.grad(compiled(x).square().sum(), [x, *sk.parameters()])
    finally:
        torch._dynamo.reset()
    tolerance = {"atol": 1e-4, "rtol": 1e-4} if kernels_on else {}
    for got, want in zip(traced, eager, strict=True):
        torch.testing.assert_close(got, want, **tolerance)
