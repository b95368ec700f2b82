"""A residual block's input read by two paths: its gradients summed by the compiled add must be PyTorch's sum to
the bit, and the branch must be a plain (x, x) wherever the kernel does not apply."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

from simclrv2.models.branch import branch
from simclrv2.models.resnet import resnet

branch_module = importlib.import_module("simclrv2.models.branch")
resnet_module = importlib.import_module("simclrv2.models.resnet")  # the package exports a function of that name


LAYOUTS = [((3, 5, 7, 9), torch.contiguous_format), ((17,), torch.contiguous_format),
           ((3, 5, 7, 9), torch.channels_last), ((2, 64, 28, 28), torch.channels_last)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("shape", "layout"), LAYOUTS)
def test_the_compiled_add_is_pytorchs_sum_to_the_bit(kernels, dtype, shape, layout):
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(shape, generator=gen).mul(100).to(dtype) for _ in range(2))
    b.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -a.view(-1)[2].item()], dtype=dtype)
    a, b = (t.contiguous(memory_format=layout) for t in (a, b))
    got = kernels.add(a, b)
    assert torch.equal(got.nan_to_num(0.0), (a + b).nan_to_num(0.0)) and got.isnan().sum() == 1
    assert got.stride() == a.stride() and got.dtype == dtype


def test_the_compiled_add_refuses_what_it_cannot_sum(kernels):
    a = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="one shape and layout"):
        kernels.add(a, a.contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="one shape and layout"):
        kernels.add(a[:, :, :, :2], a[:, :, :, :2])  # not dense
    with pytest.raises(RuntimeError, match="float32 or two bfloat16"):
        kernels.add(a.double(), a.double())
    with pytest.raises(RuntimeError, match="float32 or two bfloat16"):
        kernels.add(a, a.bfloat16())


def test_branch_sums_the_two_gradients_with_the_kernel(fused, monkeypatch):
    calls = []
    monkeypatch.setattr(branch_module, "active_kernels", lambda: type("K", (), {
        "add": lambda self, a, b: calls.append(a.shape) or fused.add(a, b)})())
    x, grad_left, grad_right = (torch.randn(2, 3, 4, 4).bfloat16().contiguous(memory_format=torch.channels_last)
                                for _ in range(3))
    left, right = branch(x.requires_grad_())
    assert left.data_ptr() == right.data_ptr() == x.data_ptr()
    torch.autograd.backward([left, right], [grad_left, grad_right])
    assert calls == [x.shape]
    assert torch.equal(x.grad, grad_left + grad_right)


def test_branch_with_one_path_unused_passes_its_gradient_through(fused):
    x = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    left, _right = branch(x)
    (left * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def test_branch_is_the_tensor_twice_where_the_kernel_does_not_apply(fused, unfused):
    x = torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True)
    left, right = branch(x)  # kernels off (unfused switched them off after fused)
    assert left is x and right is x


@pytest.mark.parametrize("case", ["no grad", "no requires_grad", "float32", "float64"])
def test_branch_is_the_tensor_twice_without_a_bf16_gradient_to_sum(fused, case):
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(case, torch.bfloat16)
    x = torch.randn(2, 3, dtype=dtype, requires_grad=case != "no requires_grad")
    with torch.set_grad_enabled(case != "no grad"):
        left, right = branch(x)
    assert left is x and right is x


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resnet_step_gives_the_same_gradients_with_and_without_the_branch(fused, monkeypatch, precision):
    sums = []
    monkeypatch.setattr(branch_module, "active_kernels", lambda: type("K", (), {
        "add": lambda self, a, b: sums.append(a.shape) or fused.add(a, b)})())
    torch.manual_seed(0)
    model = resnet(18, 0.25, cifar_stem=True, in_channels=1).to(memory_format=torch.channels_last)
    images = torch.randn(8, 1, 16, 16).to(memory_format=torch.channels_last)
    grads = []
    for use_branch in (True, False):
        if not use_branch:
            monkeypatch.setattr(resnet_module, "branch", lambda x: (x, x))
        copy_ = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            features = copy_(images)
        features.float().square().mean().backward()
        grads.append([p.grad for p in copy_.parameters()])
    # bf16: the kernel summed the gradient of each of the eight blocks' inputs; fp32 keeps autograd's add_
    assert len(sums) == (8 if precision == "bf16" else 0)
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert any(g.abs().sum() > 0 for g in grads[0])
