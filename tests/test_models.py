"""Specifications of the encoder family (docs/recipe.md#encoder): depths, widths, stems, shortcuts, where Selective
Kernels go, initialisation, layout and errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.models import (
    ARCHITECTURES,
    AvgPoolShortcut,
    SelectiveKernelConv,
    build_simclr_model,
    count_parameters,
    resnet,
)
from simclrv2.models.resnet import BasicBlock, Bottleneck

SK = 0.0625  # the authors' recommended sk_ratio (docs/recipe.md#encoder)


def _images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def _meta_count(depth: int, width: float = 1, sk_ratio: float = 0.0) -> int:
    with torch.device("meta"):  # counts without allocating (R152-3x-SK would take ~3 GB)
        return count_parameters(resnet(depth, width, sk_ratio))


# ---------------------------------------------------------------- encoder shapes and sizes


@pytest.mark.parametrize("depth", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("cifar_stem", "size"), [(True, 32), (False, 64)])
def test_every_depth_gives_pooled_features_of_feature_dim(depth: int, cifar_stem: bool, size: int) -> None:
    torch.manual_seed(0)
    encoder = resnet(depth, width_multiplier=0.125, cifar_stem=cifar_stem)
    expansion = 4 if depth >= 50 else 1
    assert encoder.feature_dim == 64 * expansion  # round(512 · 0.125) stage-4 channels, ×4 in bottlenecks
    features = encoder.forward_features(_images(2, 3, size))
    assert features.shape == (2, encoder.feature_dim)
    assert torch.equal(encoder(_images(2, 3, size)), encoder.forward_features(_images(2, 3, size)))


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("sk_ratio", [0.0, SK])
def test_grey_and_rgb_inputs(in_channels: int, sk_ratio: float) -> None:
    torch.manual_seed(0)
    encoder = resnet(18, 0.125, sk_ratio=sk_ratio, cifar_stem=True, in_channels=in_channels)
    first_conv = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels
    assert encoder(_images(2, in_channels, 28)).shape == (2, 64)  # 28 px (Fashion-MNIST): 28→14→7→4


@pytest.mark.parametrize(
    ("depth", "width", "expected"),
    [(18, 1, 512), (34, 2, 1024), (18, 0.5, 256), (50, 1, 2048), (101, 2, 4096), (152, 3, 6144)],
)
def test_feature_dim_is_512w_basic_and_2048w_bottleneck(depth: int, width: float, expected: int) -> None:
    with torch.device("meta"):
        assert resnet(depth, width).feature_dim == expected


def test_tiny_width_keeps_at_least_one_channel() -> None:
    encoder = resnet(18, 0.001, cifar_stem=True)
    assert encoder.feature_dim == 1
    assert encoder(_images(2, 3, 16)).shape == (2, 1)


def test_plain_counts_match_torchvision_backbones() -> None:
    # torchvision resnet18 / resnet50 minus their fc layer (512·1000+1000, 2048·1000+1000).
    assert _meta_count(18) == 11_176_512
    assert _meta_count(50) == 23_508_032


@pytest.mark.parametrize(
    ("depth", "width", "sk_ratio", "spec_count"),
    [(50, 1, 0.0, 24e6), (50, 1, SK, 35e6), (152, 3, SK, 795e6)],
)
def test_counts_match_the_spec_reference_sizes(depth: int, width: int, sk_ratio: float, spec_count: float):
    assert abs(_meta_count(depth, width, sk_ratio) - spec_count) / spec_count < 0.025


def test_sk_conv_parameter_count_follows_the_spec_formula() -> None:
    c_in, c, ratio = 96, 512, SK
    hidden = max(int(c * ratio), 32)  # 32
    expected = 9 * c_in * 2 * c + 2 * (2 * c) + c * hidden + 2 * hidden + hidden * 2 * c  # convs and BN γ, β
    assert count_parameters(SelectiveKernelConv(c_in, c, 1, ratio)) == expected
    assert SelectiveKernelConv(8, 1024, 1, ratio).gate[0].out_channels == 64  # C·sk_ratio above the floor


# ---------------------------------------------------------------- stems and shortcuts


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_imagenet_stem_is_7x7_stride_2_with_max_pool() -> None:
    stem = resnet(18, 0.5).stem
    (conv,) = _convs(stem)
    assert (conv.kernel_size, conv.stride, conv.out_channels) == ((7, 7), (2, 2), 32)
    assert isinstance(stem[-1], nn.MaxPool2d)


def test_sk_uses_resnet_d_stem_of_three_3x3_convs() -> None:
    stem = resnet(50, 0.5, sk_ratio=SK).stem
    convs = _convs(stem)
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert [c.out_channels for c in convs] == [16, 16, 32]  # 64w/2, 64w/2, 64w
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem) == 3
    assert isinstance(stem[-1], nn.MaxPool2d)


@pytest.mark.parametrize("sk_ratio", [0.0, SK])
def test_cifar_stem_is_one_3x3_stride_1_conv_without_max_pool(sk_ratio: float) -> None:
    stem = resnet(50, 0.5, sk_ratio=sk_ratio, cifar_stem=True).stem
    (conv,) = _convs(stem)
    assert (conv.kernel_size, conv.stride, conv.out_channels) == ((3, 3), (1, 1), 32)
    assert not any(isinstance(m, nn.MaxPool2d) for m in stem)
    assert stem(_images(2, 3, 32)).shape[-2:] == (32, 32)


def test_sk_down_sampling_blocks_use_avg_pool_shortcut() -> None:
    encoder = resnet(50, 0.125, sk_ratio=SK)
    first_blocks = [stage[0] for stage in encoder.stages]
    assert all(isinstance(b.shortcut, AvgPoolShortcut) for b in first_blocks)
    assert isinstance(first_blocks[0].shortcut[0], nn.Identity)  # stride-1 projection: no pooling
    for block in first_blocks[1:]:
        pool, conv, _ = block.shortcut
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
        assert conv.kernel_size == (1, 1) and conv.stride == (1, 1)
    assert all(isinstance(stage[1].shortcut, nn.Identity) for stage in encoder.stages)


def test_plain_down_sampling_blocks_use_strided_1x1_conv() -> None:
    encoder = resnet(18, 0.125)
    assert isinstance(encoder.stages[0][0].shortcut, nn.Identity)  # 64 → 64, stride 1: as torchvision
    conv, bn = encoder.stages[1][0].shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)


def test_sk_replaces_the_3x3_conv_of_every_block() -> None:
    for depth in (18, 50):
        blocks = _blocks(resnet(depth, 0.125, sk_ratio=SK))
        assert all(sum(isinstance(m, SelectiveKernelConv) for m in b.residual) == 1 for b in blocks)
        index = 0 if depth == 18 else 3  # basic: the first 3×3 conv; bottleneck: the middle conv
        assert all(isinstance(b.residual[index], SelectiveKernelConv) for b in blocks)
    assert not any(isinstance(m, SelectiveKernelConv) for m in resnet(50, 0.125).modules())


def test_backward_reaches_every_parameter_of_an_sk_network() -> None:
    torch.manual_seed(0)
    model = build_simclr_model(50, 0.125, sk_ratio=SK, cifar_stem=True, head_layers=2, proj_dim=8)
    for block in _blocks(model):  # undo the zero γ, which (rightly) stops gradients into the branch at init
        nn.init.ones_(block.residual[-1].weight)
    model(_images(4, 3, 16)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize(("depth", "sk_ratio"), [(18, 0.0), (34, SK), (50, 0.0), (50, SK)])
def test_each_block_starts_as_its_shortcut(depth: int, sk_ratio: float) -> None:
    torch.manual_seed(0)
    encoder = resnet(depth, 0.125, sk_ratio=sk_ratio).eval()
    x = encoder.stem(_images(2, 3, 64))
    for block in _blocks(encoder):
        last_bn = block.residual[-1]
        assert isinstance(last_bn, nn.BatchNorm2d) and torch.all(last_bn.weight == 0)
        assert torch.all(block.residual(x) == 0)
        torch.testing.assert_close(block(x), F.relu(block.shortcut(x)))
        x = block(x)


def test_batch_norms_use_spec_eps_and_momentum_and_unit_gamma_elsewhere() -> None:
    model = build_simclr_model(50, 0.125, sk_ratio=SK)
    last_bns = {id(b.residual[-1]) for b in _blocks(model)}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) > len(last_bns) > 0
    for bn in bns:
        assert bn.eps == 1e-5 and bn.momentum == 0.1
        if id(bn) not in last_bns:
            assert torch.all(bn.weight == 1)


def test_convs_are_kaiming_normal_fan_out() -> None:
    torch.manual_seed(0)
    conv = resnet(18, 1).stages[3][1].residual[0]  # 3×3, 512 → 512
    assert conv.kernel_size == (3, 3) and conv.out_channels == 512
    expected_std = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std


# ---------------------------------------------------------------- channels_last


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_gives_the_same_features(train: bool) -> None:
    # float64: batch-statistics BN on 2×2 maps amplifies float32 summation-order noise to ~1e-4
    torch.manual_seed(0)
    encoder = resnet(50, 0.125, sk_ratio=SK).double().train(train)
    for block in _blocks(encoder):  # let the residual branches contribute
        nn.init.normal_(block.residual[-1].weight, std=0.5)
    fast = copy.deepcopy(encoder).to(memory_format=torch.channels_last)
    x = _images(3, 3, 40).double()
    expected = encoder(x)
    got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- errors


def test_unknown_depth_error_lists_the_valid_depths() -> None:
    with pytest.raises(SimCLRv2Error, match="18, 34, 50, 101, 152"):
        resnet(42)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width_multiplier": 0},
        {"width_multiplier": -1},
        {"width_multiplier": float("nan")},
        {"sk_ratio": 1.0},
        {"sk_ratio": -0.1},
        {"in_channels": 0},
    ],
)
def test_bad_encoder_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(SimCLRv2Error):
        resnet(18, **kwargs)
