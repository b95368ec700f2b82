"""Fused BatchNorm → (+ shortcut) → ReLU (simclrv2.models.bn_relu): every output, gradient and running statistic
against a float64 reference built from PyTorch's own ops, at least as accurate as PyTorch's float32/bf16 path;
the same model, parameters and state dict as before; the fallbacks where the kernel does not apply."""

from __future__ import annotations

import copy
import logging
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simclrv2.config import load_config
from simclrv2.models import bn_relu, conv_rules, cpu_kernels
from simclrv2.models.bn_relu import FusingSequential, batch_norm, batch_norm_relu
from simclrv2.models.cpu_kernels import use_fused_kernels
from simclrv2.models.global_bn import GlobalBatchNorm2d
from simclrv2.models.resnet import resnet
from simclrv2.stages import session


def _reference(x, weight, bias, residual, relu=True):
    """float64 relu(batch_norm(x) + residual) (or batch_norm(x) without ReLU) in training mode, with its leaf
    tensors for the gradients."""
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    r = None if residual is None else residual.detach().double().requires_grad_()
    y = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True, 0.0, 1e-5)
    if relu:
        y = (y + r if r is not None else y).relu()
    return y, leaves + ([r] if r is not None else [])


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def _run(x, bn, residual, grad, relu=True):
    """Output and gradients (x, weight, bias[, residual]) of batch_norm_relu (batch_norm without ReLU) with
    whichever path is on."""
    x = x.detach().requires_grad_()
    r = None if residual is None else residual.detach().requires_grad_()
    out = batch_norm_relu(x, bn, r) if relu else batch_norm(x, bn)
    out.backward(grad)
    grads = [x.grad, bn.weight.grad, bn.bias.grad] + ([r.grad] if r is not None else [])
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("with_residual", "relu"), [(False, True), (True, True), (False, False)])
# 24 and 3 channels run the kernels' loops over a run-time channel count; 16 to 512 their compile-time ones
@pytest.mark.parametrize("shape", [(6, 24, 5, 5), (32, 64, 7, 7), (3, 3, 4, 4), (5, 16, 6, 6), (4, 32, 5, 3),
                                   (3, 128, 3, 3), (2, 256, 3, 3), (3, 512, 2, 2)])
def test_fused_matches_float64_at_least_as_well_as_pytorch(kernels, unfused, dtype, with_residual, relu, shape):
    torch.manual_seed(0)
    cl = torch.channels_last
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=cl)
    residual = torch.randn(shape).to(dtype).contiguous(memory_format=cl) if with_residual else None
    grad = torch.randn(shape).to(dtype).contiguous(memory_format=cl)
    bn = nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.normal_()
    expected, leaves = _reference(x, bn.weight, bn.bias, residual, relu)
    expected.backward(grad.double())

    errors = {}
    for name in ("fused", "pytorch"):
        layer = copy.deepcopy(bn)
        cpu_kernels._KERNELS["active"] = kernels
        if name == "pytorch":
            cpu_kernels._KERNELS.pop("active")
        out, grads = _run(x, layer, residual, grad, relu)
        cpu_kernels._KERNELS.pop("active", None)
        assert out.dtype == dtype and out.is_contiguous(memory_format=cl)
        assert all(g.dtype == t.dtype for g, t in zip(grads, [x, bn.weight, bn.bias, residual], strict=False))
        references = [expected, *(leaf.grad for leaf in leaves)]
        errors[name] = [_relative_error(t, e) for t, e in zip([out, *grads], references, strict=True)]
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for fused_error, pytorch_error in zip(errors["fused"], errors["pytorch"], strict=True):
        assert fused_error <= max(2 * pytorch_error, tolerance), errors


@pytest.mark.parametrize(("with_residual", "relu"), [(False, True), (True, True), (False, False)])
def test_a_nan_propagates_as_through_pytorchs_ops(kernels, unfused, with_residual, relu):
    """A NaN in the input makes its channel's statistics NaN: every output of that channel must be NaN, as PyTorch's
    BatchNorm and ReLU give (torch.relu keeps NaN), so that training's non-finite checks see it."""
    cl = torch.channels_last
    x = torch.randn(4, 16, 3, 3).contiguous(memory_format=cl)
    x[1, 0, 2, 2] = float("nan")
    residual = torch.randn(4, 16, 3, 3).contiguous(memory_format=cl) if with_residual else None
    outputs = []
    for active in (True, False):
        cpu_kernels._KERNELS["active"] = kernels
        if not active:
            cpu_kernels._KERNELS.pop("active")
        bn = nn.BatchNorm2d(16)
        outputs.append(batch_norm_relu(x, bn, residual) if relu else batch_norm(x, bn))
        cpu_kernels._KERNELS.pop("active", None)
    fused_out, pytorch_out = outputs
    assert pytorch_out[:, 0].isnan().all()
    assert torch.equal(fused_out.isnan(), pytorch_out.isnan())


def test_the_kernel_refuses_a_residual_without_relu(fused):
    """The residual is added before the ReLU: a call asking for BatchNorm alone with one is a caller's error."""
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="relu=true"):
        fused.bn_relu_forward(x, torch.ones(4), torch.zeros(4), x.clone(), 1e-5, False)


@pytest.mark.parametrize("layer", [batch_norm_relu, batch_norm])
def test_running_statistics_and_counter_follow_batchnorm2d(fused, layer):
    torch.manual_seed(1)
    for momentum in (0.1, None):  # exponential, and the cumulative average of momentum=None
        ours, theirs = nn.BatchNorm2d(8, momentum=momentum), nn.BatchNorm2d(8, momentum=momentum)
        for _ in range(3):
            x = (torch.randn(4, 8, 6, 6) * 3 + 2).contiguous(memory_format=torch.channels_last)
            layer(x, ours)
            theirs(x)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)


def test_variance_of_a_channel_with_a_large_mean_does_not_cancel(fused):
    """Sums of x and x^2 in float would lose the spread of values around 1000; the kernel shifts by a pivot."""
    torch.manual_seed(2)
    x = (1000 + 0.01 * torch.randn(64, 4, 8, 8)).contiguous(memory_format=torch.channels_last)
    bn = nn.BatchNorm2d(4, momentum=1.0)  # running_var becomes the batch's unbiased variance
    batch_norm_relu(x, bn)
    expected = x.double().var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_var.double(), expected, rtol=1e-3, atol=0)


def test_fusing_sequential_runs_the_kernel_for_each_bn_relu_pair_and_each_lone_bn(fused, monkeypatch):
    calls = []
    real = fused.bn_relu_forward
    monkeypatch.setattr(bn_relu, "active_kernels", lambda: _Spy(real, calls))
    block = FusingSequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                             nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                             nn.BatchNorm2d(8), nn.Identity())  # BNs not followed by ReLU: the kernel without it
    block = block.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    expected = nn.Sequential(*block)(x)  # plain Sequential: the same modules, unfused
    got = block(x)
    assert len(calls) == 3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert list(block.state_dict()) == list(nn.Sequential(*block).state_dict())


class _Spy:
    """Stands for the kernels module, counting forward calls."""

    def __init__(self, real_forward, calls):
        self._real, self._calls = real_forward, calls
        self.bn_relu_backward = cpu_kernels._KERNELS["active"].bn_relu_backward

    def bn_relu_forward(self, *args):
        self._calls.append(args[0].shape)
        return self._real(*args)


@pytest.mark.parametrize("case", ["eval", "nchw", "float64", "global_bn", "no_running_stats", "residual_dtype"])
def test_falls_back_to_pytorch_where_the_kernel_does_not_apply(fused, monkeypatch, case):
    calls = []
    monkeypatch.setattr(bn_relu, "active_kernels", lambda: _Spy(fused.bn_relu_forward, calls))
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    residual = None
    if case == "eval":
        bn.eval()
    elif case == "nchw":
        x = torch.randn(2, 4, 5, 5)
    elif case == "float64":
        x, bn = x.double(), bn.double()
    elif case == "global_bn":
        bn = GlobalBatchNorm2d(4)
    elif case == "no_running_stats":
        bn = nn.BatchNorm2d(4, track_running_stats=False)
    elif case == "residual_dtype":
        residual = torch.randn(2, 4, 5, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    expected_bn = copy.deepcopy(bn)
    got = batch_norm_relu(x, bn, residual)
    y = expected_bn(x)
    expected = torch.relu(y + residual) if residual is not None else torch.relu(y)
    assert calls == []
    torch.testing.assert_close(got, expected)


def test_torch_compile_traces_the_encoder_with_the_kernels_in_one_graph(fused):
    model = resnet(18, 0.125, cifar_stem=True, in_channels=1).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    targets = [str(node.target) for graph in explanation.graphs for node in graph.graph.nodes]
    # the stem, two per block and the three projection shortcuts' BatchNorms
    assert sum("bn_relu_forward" in target for target in targets) == 20


def test_a_compiled_training_step_runs_the_kernels_and_matches_eager(fused, monkeypatch):
    """Through AOTAutograd (the ``aot_eager`` backend: no C++ compile) the operators' fake shapes and their
    autograd formula must give what eager gives, and the kernels must really run."""
    torch._dynamo.reset()
    calls = []
    monkeypatch.setattr(bn_relu, "active_kernels", lambda: _Spy(fused.bn_relu_forward, calls))
    torch.manual_seed(5)
    model = resnet(18, 0.125, cifar_stem=True, in_channels=1).to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    results = []
    for compiled in (False, True):
        copy_ = copy.deepcopy(model)
        run = torch.compile(copy_, backend="aot_eager", fullgraph=True) if compiled else copy_
        out = run(x)
        out.square().mean().backward()
        results.append((out, [p.grad for p in copy_.parameters()], list(copy_.buffers())))
    assert len(calls) == 2 * 20  # the stem, two per block and three shortcuts, eager then compiled
    (out_e, grads_e, buffers_e), (out_c, grads_c, buffers_c) = results
    torch.testing.assert_close(out_c, out_e)
    for got, expected in zip(grads_c + buffers_c, grads_e + buffers_e, strict=True):
        torch.testing.assert_close(got, expected)
    torch._dynamo.reset()


@pytest.mark.parametrize(("depth", "sk_ratio"), [(18, 0.0), (18, 0.0625), (50, 0.0)])
def test_a_resnet_trains_as_accurately_fused_as_unfused(kernels, unfused, depth, sk_ratio, monkeypatch):
    """One fp32 training step of whole encoders (BasicBlock, SK, Bottleneck) against the same step in float64:
    outputs, all gradients together and the running statistics are as close fused as with PyTorch's ops, in the
    median over five initialisations.

    The convolutions stay oneDNN's on both sides: this step's early gradients are badly conditioned (noise of 1e-5
    of the mean on the stage outputs moved the stem's gradient by 2e-2 in float64), so Winograd's F(4x4) rounding,
    ~10x oneDNN's elementwise, put them 3e-3 from float64 against 1.4e-5; tests/test_winograd_conv.py bounds
    Winograd's error on a well-conditioned step. The same conditioning makes one initialisation's error a draw
    (with Selective Kernels, 3e-5 to 8e-3 from one seed to the next, for either path), hence the median."""
    monkeypatch.setattr(conv_rules, "DIRECT_KERNELS", False)

    def step(model, x, active, dtype):
        cpu_kernels._KERNELS["active"] = active
        copy_ = copy.deepcopy(model).to(dtype)
        out = copy_(x.to(dtype))
        out.square().mean().backward()
        cpu_kernels._KERNELS.pop("active")
        grads = torch.cat([p.grad.flatten() for p in copy_.parameters()])
        buffers = torch.cat([b.flatten() for b in copy_.buffers() if b.is_floating_point()])
        return [out, grads, buffers]

    errors: dict[str, list[list[float]]] = {"fused": [], "pytorch": []}
    for seed in range(5):
        torch.manual_seed(seed)
        model = resnet(depth, 0.25, sk_ratio=sk_ratio, cifar_stem=True, in_channels=1)
        model = model.to(memory_format=torch.channels_last)
        for module in model.modules():  # every block's residual branch contributes (its last γ starts at 0)
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
        x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        reference = step(model, x, None, torch.float64)  # float64 is never fused: PyTorch's ops throughout
        for path, active in (("fused", kernels), ("pytorch", None)):
            got = step(model, x, active, torch.float32)
            errors[path].append([_relative_error(g, want) for g, want in zip(got, reference, strict=True)])
    for index in range(3):  # output, gradients, running statistics
        fused, pytorch = (statistics.median(e[index] for e in errors[path]) for path in ("fused", "pytorch"))
        assert fused <= max(2 * pytorch, 1e-6)


def test_use_fused_kernels_switches_the_path_and_reports_it(kernels, unfused):
    assert use_fused_kernels(True) is True and cpu_kernels.active_kernels() is kernels
    assert use_fused_kernels(False) is False and cpu_kernels.active_kernels() is None


def test_without_a_compiler_the_layers_run_unfused_with_one_warning(monkeypatch, unfused, caplog):
    monkeypatch.setattr(cpu_kernels, "_KERNELS", {})
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        assert use_fused_kernels(True) is False
    assert cpu_kernels.active_kernels() is None
    assert [r.getMessage() for r in caplog.records if "C++ compiler" in r.getMessage()]


def test_without_the_compiler_cxx_names_the_warning_says_which(monkeypatch, unfused, caplog):
    monkeypatch.setattr(cpu_kernels, "_KERNELS", {})
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        assert use_fused_kernels(True) is False
    assert [r for r in caplog.records if "'no-such-compiler++' not found" in r.getMessage()]


# torch's message for a failed ninja build: the failing command first, the compiler's diagnostics after it
_NINJA_FAILURE = ("Error building extension 'x': [1/3] clang++ -MMD -MF bn_relu.o.d -O3 -c bn_relu.cpp -o bn_relu.o\n"
                  "FAILED: bn_relu.o\nIn file included from bn_relu.cpp:1:\n"
                  "ParallelOpenMP.h:12:10: fatal error: 'omp.h' file not found\n1 error generated.\n")


@pytest.mark.parametrize(("message", "said"), [
    ("Error building extension 'x'\ndetails", "Error building extension 'x'"),
    (_NINJA_FAILURE, "ParallelOpenMP.h:12:10: fatal error: 'omp.h' file not found"),
    ("", "RuntimeError")])
def test_a_failed_build_warns_why_and_falls_back(monkeypatch, unfused, caplog, message, said):
    def broken(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(cpu_kernels, "_KERNELS", {})
    monkeypatch.setenv("CXX", "clang++")
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: "/usr/bin/" + name)  # a compiler, as far as it knows
    monkeypatch.setattr("torch.utils.cpp_extension.load", broken)
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        assert use_fused_kernels(True) is False
        assert use_fused_kernels(True) is False  # the next session neither rebuilds nor warns again
    assert [r.getMessage() for r in caplog.records if "failed to build" in r.getMessage()] == [
        f"compiled CPU kernels failed to build with 'clang++' ({said}); using PyTorch's ops"]


def _fake_build(monkeypatch, runtimes_before: set[str], runtimes_after: set[str]) -> object:
    """A build that loads ``built`` and changes the process's OpenMP runtimes from the first set to the second."""
    built = object()
    loaded = []
    monkeypatch.setattr(cpu_kernels, "_KERNELS", {})
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(cpu_kernels, "openmp_runtimes", lambda: runtimes_after if loaded else runtimes_before)
    monkeypatch.setattr("torch.utils.cpp_extension.load", lambda *args, **kwargs: loaded.append(1) or built)
    return built


def test_kernels_that_bring_a_second_openmp_runtime_are_not_used(monkeypatch, unfused, caplog):
    """clang++ beside torch's libgomp links LLVM's libomp: two thread pools spinning against each other made a step
    slower than PyTorch's own ops, so the build is set aside with a line saying to build with g++."""
    torch_runtime = "/venv/torch/lib/libgomp.so.1"
    _fake_build(monkeypatch, {torch_runtime}, {torch_runtime, "/usr/lib/llvm-14/lib/libomp.so.5"})
    monkeypatch.setenv("CXX", "clang++")
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        assert use_fused_kernels(True) is False
        assert use_fused_kernels(True) is False  # said once
    warnings = [r.getMessage() for r in caplog.records if "OpenMP" in r.getMessage()]
    assert len(warnings) == 1 and "'clang++'" in warnings[0] and "(libomp.so.5) beside torch's (libgomp.so.1)" in \
        warnings[0] and "g++" in warnings[0]


@pytest.mark.parametrize(("before", "after"), [
    ({"/venv/torch/lib/libgomp.so.1"}, {"/venv/torch/lib/libgomp.so.1"}),  # g++: torch's copy of libgomp.so.1
    (set(), {"/usr/lib/libgomp.so.1"}),  # a torch without OpenMP: the kernels' runtime is the only one
    (set(), set())])  # no /proc to list them: nothing is set aside
def test_kernels_that_share_torchs_openmp_runtime_are_used(monkeypatch, unfused, before, after):
    built = _fake_build(monkeypatch, before, after)
    assert use_fused_kernels(True) is True and cpu_kernels.active_kernels() is built


def test_openmp_runtimes_reads_the_mapped_files(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 08:01 1 /opt/my env/torch/lib/libgomp.so.1\n"  # a path with a space
        "7f01-7f02 r-xp 00001000 08:01 1 /opt/my env/torch/lib/libgomp.so.1\n"
        "7f03-7f04 r--p 00000000 08:01 2 /usr/lib/llvm-14/lib/libomp.so.5\n"
        "7f05-7f06 r--p 00000000 08:01 3 /usr/lib/libiomp5.so\n"
        "7f07-7f08 r--p 00000000 08:01 4 /usr/lib/libgomplike/libc.so.6\n"
        "7f09-7f0a rw-p 00000000 00:00 0 \n"
        "7f0b-7f0c rw-p 00000000 00:00 0                          [heap]\n")
    assert cpu_kernels.openmp_runtimes(maps) == {
        "/opt/my env/torch/lib/libgomp.so.1", "/usr/lib/llvm-14/lib/libomp.so.5", "/usr/lib/libiomp5.so"}
    assert cpu_kernels.openmp_runtimes(tmp_path / "missing") == set()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="lists the runtimes from /proc")
def test_the_built_kernels_share_torchs_openmp_runtime(kernels):
    assert len(cpu_kernels.openmp_runtimes()) == 1


@pytest.mark.parametrize(("device", "wanted", "expected"), [("cpu", True, True), ("cpu", False, False)])
def test_a_session_sets_the_path_from_its_config(monkeypatch, tmp_path, device, wanted, expected):
    calls = []
    monkeypatch.setattr(session, "use_fused_kernels", lambda enabled: calls.append(enabled) or enabled)
    config = load_config("demo", {"run.device": device, "run.fused_kernels": str(wanted).lower()})
    session.open_session("pretrain", config, tmp_path / "run", resume=False, overwrite=False)
    assert calls == [expected]
