"""The A/B and profiling scripts: each times the paths it names, on the same work, and leaves the package as it was."""

from __future__ import annotations

import itertools
import json
import sys

import pytest
import torch

from benchmark_scripts import load_benchmark
from simclrv2.models import cpu_kernels

step_profile = load_benchmark("step_profile")


def test_step_profile_shares_out_one_training_step_by_operator(capsys):
    step_profile.main(["--width", "0.25", "--batch", "2", "--precision", "fp32", "--no-keep-freed-memory",
                       "--no-fused-kernels", "--rows", "1000", "--dram-copy-mib", "8"])
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["keep_freed_memory"] is False and record["fused_kernels"] is False and record["step_s"] > 0
    names = {op["name"] for op in record["ops"]}
    assert {"aten::convolution_backward", "aten::native_batch_norm_backward"} <= names
    shares = [op["share"] for op in record["ops"]]
    assert shares == sorted(shares, reverse=True)
    # every operator listed (more rows than operators), so the shares sum to one up to each row's rounding;
    # a load-independent check: a busy CPU moves time between operators, not out of the table
    assert abs(sum(shares) - 1.0) <= 0.0005 * len(shares) + 1e-9
    assert min(record[k] for k in ("relu_backward_gbps", "copy_gbps", "add_gbps", "dram_copy_gbps")) > 0


gemm_rules_ab = load_benchmark("gemm_rules_ab")


def test_gemm_rules_ab_alternates_the_rule_sets_step_by_step_and_restores_the_default(amx, monkeypatch, capsys):
    """On AMX, where the bf16 rules apply, the rule sets differ in what runs."""
    from simclrv2.models import conv_rules

    for name in sys.modules["pretrain_throughput"].RULE_NAMES:  # loaded by gemm_rules_ab
        monkeypatch.setattr(conv_rules, name, getattr(conv_rules, name))  # put back after the test, whatever happens
    seen = []
    step = gemm_rules_ab.step_seconds
    monkeypatch.setattr(gemm_rules_ab, "step_seconds",
                        lambda *a: seen.append(conv_rules.GEMM_RULES) or step(*a))
    assert gemm_rules_ab.main(["--width", "0.125", "--batch", "2", "--precision", "bf16", "--pairs", "3",
                               "--warmup", "1", "--rules", "default", "none"]) == 0
    record = json.loads(capsys.readouterr().out)
    default = gemm_rules_ab.GEMM_RULE_SETS["default"]["GEMM_RULES"]
    assert seen == [default, (), default, (), (), default, default, ()]  # warm-ups, then A B, B A, A B
    assert conv_rules.GEMM_RULES == default  # the package's rules again after the A/B
    assert len(record["steps_s"]["default"]) == len(record["steps_s"]["none"]) == 3
    low, high = record["default_over_none"]["range"]
    assert low <= record["default_over_none"]["median"] <= high
    with pytest.raises(SystemExit):
        gemm_rules_ab.main(["--rules", "none", "none"])


bn_relu_shapes = load_benchmark("bn_relu_shapes")


def test_bn_relu_shapes_rates_keep_three_figures_so_a_slow_tiny_shape_is_not_zero():
    assert bn_relu_shapes.gb_per_s(131_072, 3e-3) == 0.0437  # one decimal made it 0.0, failing the test below
    assert bn_relu_shapes.gb_per_s(102_760_448, 3.45e-3) == 29.8


@pytest.mark.skipif(not cpu_kernels.compiler_available(), reason="no C++ compiler")
def test_bn_relu_shapes_times_both_paths_for_every_stage(capsys):
    assert bn_relu_shapes.main(["--width", "0.125", "--batch", "2", "--precision", "fp32", "--repeats", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["channels"], r["size"], r["shortcut"]) for r in records] == [
        (c, s, shortcut) for c, s in ((8, 28), (16, 14), (32, 7), (64, 4)) for shortcut in (False, True)]
    assert all(r["pytorch_ms"] > 0 and r["fused_ms"] > 0 and r["fused_gbps"] > 0 for r in records)
    assert all(r["bn_only_pytorch_ms"] > 0 and r["bn_only_fused_ms"] > 0 for r in records if not r["shortcut"])


eval_forward_ab = load_benchmark("eval_forward_ab")


def test_eval_forward_ab_alternates_the_two_batchnorm_paths_and_restores_the_package(fused, monkeypatch, capsys):
    from simclrv2.models import bn_relu

    package_test = bn_relu._fusable_eval
    eval_calls = []
    real = fused.bn_relu_eval
    monkeypatch.setattr(fused, "bn_relu_eval", lambda *a: eval_calls.append(1) or real(*a), raising=False)
    paths = []
    timed = eval_forward_ab.encoder_features
    monkeypatch.setattr(eval_forward_ab, "encoder_features",
                        lambda *a: paths.append((bn_relu._fusable_eval is package_test, len(eval_calls))) or timed(*a))
    assert eval_forward_ab.main(["--width", "0.125", "--precision", "fp32", "--images", "8", "--batch-size", "4",
                                 "--pairs", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [kernel for kernel, _ in paths] == [True, False, True, False, False, True]  # warm-ups, A B, B A
    calls_before = [count for _, count in paths] + [len(eval_calls)]
    added = [b - a for a, b in itertools.pairwise(calls_before)]
    assert added == [40, 0, 40, 0, 0, 40]  # 20 BatchNorms a batch, two batches, on the kernel's path only
    assert bn_relu._fusable_eval is package_test
    low, high = record["pytorch_over_kernel"]["range"]
    assert low <= record["pytorch_over_kernel"]["median"] <= high and len(record["seconds"]["kernel"]) == 2


predict_ab = load_benchmark("predict_ab")


def test_predict_ab_rotates_kernels_and_pytorchs_ops_on_both_layouts_and_leaves_the_switch_off(
        kernels, unfused, monkeypatch, capsys):
    from simclrv2.models import bn_relu, cpu_kernels

    seen = []
    predict = predict_ab.LoadedModel.predict

    def spy(model, images, batch_size, precision, fused_kernels):
        evaluated = []
        real = bn_relu._evaluated
        monkeypatch.setattr(bn_relu, "_evaluated", lambda *a, **k: evaluated.append(1) or real(*a, **k))
        try:
            return predict(model, images, batch_size=batch_size, precision=precision, fused_kernels=fused_kernels)
        finally:
            monkeypatch.setattr(bn_relu, "_evaluated", real)
            weight = next(w for w in model.encoder.parameters() if w.dim() == 4 and w.shape[1] > 1)
            layout = weight.is_contiguous(memory_format=torch.channels_last)  # a 1-channel stem is both
            seen.append((fused_kernels, layout, len(evaluated)))

    monkeypatch.setattr(predict_ab.LoadedModel, "predict", spy)
    assert predict_ab.main(["--width", "0.125", "--images", "8", "--batch-size", "4", "--rounds", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    # 20 BatchNorms a batch, two batches, on the kernels' path only, whose network keeps the layout it loads in
    on, off, off_last = (True, False, 40), (False, False, 0), (False, True, 0)
    assert seen == [on, off, off_last, on, off, off_last, off_last, off, on]  # warm-ups, A B C, C B A
    assert cpu_kernels.active_kernels() is None
    for name in ("pytorch", "pytorch-channels-last"):
        low, high = record[f"{name}_over_kernels"]["range"]
        assert low <= record[f"{name}_over_kernels"]["median"] <= high and len(record["seconds"][name]) == 2


sk_mix_ab = load_benchmark("sk_mix_ab")


def test_sk_mix_ab_times_the_same_gradients_on_every_path_and_restores_the_package(capsys):
    """The autograd path is the same function as the package's (same output and gradients), so the ratios compare
    ways of doing one thing; the paths alternate (the compiled mix on for the package's alone) and the package's
    forward and its compiled mix are back afterwards."""
    from simclrv2.models import SelectiveKernelConv, selective_kernel

    torch.manual_seed(0)
    sk = SelectiveKernelConv(4, 6, 2, 0.0625).double()
    x = torch.randn(3, 4, 7, 7, dtype=torch.double).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(3, 6, 4, 4, dtype=torch.double)

    def grads(forward):
        sk.zero_grad()
        out = forward(sk, x)
        (out * upstream).sum().backward()
        return [out.detach()] + [p.grad.clone() for p in sk.parameters()]

    for got, want in zip(grads(SelectiveKernelConv.forward), grads(sk_mix_ab.autograd_forward), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

    package = SelectiveKernelConv.forward
    paths = []
    step = sk_mix_ab.encoder_step
    sk_mix_ab.encoder_step = lambda *a: paths.append(
        (SelectiveKernelConv.forward is package, selective_kernel.COMPILED_MIX)) or step(*a)
    try:
        assert sk_mix_ab.main(["--width", "0.125", "--precision", "fp32", "--batch", "4", "--pairs", "2"]) == 0
    finally:
        sk_mix_ab.encoder_step = step
    package_path, pytorch_mix, autograd = (True, True), (True, False), (False, False)
    # warm-ups, then A B C and C B A
    assert paths == [package_path, pytorch_mix, autograd] * 2 + [autograd, pytorch_mix, package_path]
    assert SelectiveKernelConv.forward is package and selective_kernel.COMPILED_MIX
    record = json.loads(capsys.readouterr().out)
    for name in ("autograd", "pytorch_mix"):
        low, high = record[f"{name}_over_package"]["range"]
        assert low <= record[f"{name}_over_package"]["median"] <= high
    assert len(record["seconds"]["package"]) == len(record["seconds"]["pytorch-mix"]) == 2


winograd_transform_ab = load_benchmark("winograd_transform_ab")


@pytest.mark.parametrize("tile", (2, 4))
def test_winograd_transform_ab_sides_compute_the_same_passes(winograd_kernels, tile):
    """The three sides differ in how the weights are transformed, not in what the passes give."""
    from simclrv2.models import winograd

    kernels = winograd_kernels
    gen = torch.Generator().manual_seed(tile)
    x = torch.randn(2, 16, 6, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 32, 6, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(32, 16, 3, 3, generator=gen) / 12).contiguous(memory_format=torch.channels_last)
    package = {name: getattr(winograd, name) for name in ("forward", "input_grad", "weight_grad")}
    close = {"rtol": 1e-4, "atol": 1e-4}  # F(4x4)'s float32 rounding (tests/test_winograd_conv.py's bounds)
    for side in (winograd_transform_ab.gemm_passes(), winograd_transform_ab.einsum_passes()):
        torch.testing.assert_close(side["forward"](kernels, x, weight, tile),
                                   package["forward"](kernels, x, weight, tile), **close)
        torch.testing.assert_close(side["input_grad"](kernels, grad_out, weight, tile),
                                   package["input_grad"](kernels, grad_out, weight, tile), **close)
        torch.testing.assert_close(side["weight_grad"](kernels, x, grad_out, tile),
                                   package["weight_grad"](kernels, x, grad_out, tile), **close)


def test_winograd_transform_ab_rotates_the_sides_and_restores_the_package(kernels, monkeypatch, capsys):
    from simclrv2.models import winograd

    package = winograd.forward
    seen = []
    real_cross_entropy = winograd_transform_ab.F.cross_entropy

    def spy(*args, **kwargs):
        seen.append(winograd.forward is package)
        return real_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(winograd_transform_ab.F, "cross_entropy", spy)
    assert winograd_transform_ab.main(["--width", "0.125", "--batch", "4", "--pairs", "3"]) == 0
    # warm-ups (compiled, gemm, einsum twice), then rounds rotating: ABC, BCA, CAB
    assert seen == [True, False, False] * 2 + [True, False, False, False, False, True, False, True, False]
    assert winograd.forward is package
    record = json.loads(capsys.readouterr().out)
    for side in ("gemm", "einsum"):
        low, high = record[f"compiled_over_{side}_quartiles"]
        assert low <= record[f"compiled_over_{side}_median"] <= high and record[f"{side}_ms"] > 0


optimizer_step_ab = load_benchmark("optimizer_step_ab")


def test_optimizer_step_ab_times_the_default_and_the_fused_step_of_both_optimizers(capsys):
    assert optimizer_step_ab.main(["--width", "0.125", "--rounds", "3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["optimizer"] for r in records] == ["sgd", "adamw"]
    for record in records:
        assert record["default_ms"] > 0 and record["fused_ms"] > 0 and record["fused_over_default"] > 0
        assert record["parameters"] > 0 and record["rounds"] == 3
