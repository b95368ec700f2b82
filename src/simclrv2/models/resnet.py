"""The SimCLRv2 encoder: one ResNet family configured by depth, width multiplier, Selective Kernels and stem.

Post-activation ResNet v1.5 (the stride sits on the 3×3 conv), as in the authors' code. Every variant is a few
arguments of :func:`resnet`; :data:`ARCHITECTURES` maps a depth to its block type and blocks per stage.

BatchNorm layers use PyTorch's defaults, which are docs/recipe.md#encoder's eps 1e-5 and momentum 0.1 (TF decay 0.9).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.models.bn_relu import FusingSequential
from simclrv2.models.branch import branch
from simclrv2.models.conv import Conv2d
from simclrv2.models.selective_kernel import AvgPoolShortcut, SelectiveKernelConv
from simclrv2.models.tf_pooling import stem_pool

STAGE_CHANNELS = (64, 128, 256, 512)  # base widths of the four stages at width multiplier 1
STEM_CHANNELS = 64


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    padding = kernel_size // 2
    return Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    conv = _conv(in_channels, out_channels, kernel_size, stride)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _zero_bn(channels: int) -> nn.BatchNorm2d:
    """Last BN of a residual branch, γ = 0: every block starts as its shortcut (Goyal et al., 2017)."""
    bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(bn.weight)
    return bn


def _spatial_conv(in_channels: int, channels: int, stride: int, sk_ratio: float) -> list[nn.Module]:
    """The block's (first) 3×3 conv with its BN-ReLU, or the SK conv that replaces all three."""
    if sk_ratio > 0:
        return [SelectiveKernelConv(in_channels, channels, stride, sk_ratio)]
    return _conv_bn_relu(in_channels, channels, 3, stride)


def _shortcut(in_channels: int, out_channels: int, stride: int, sk_ratio: float, tf_pooling: bool) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if sk_ratio > 0:
        return AvgPoolShortcut(in_channels, out_channels, stride, tf_pooling)
    return FusingSequential(_conv(in_channels, out_channels, 1, stride), nn.BatchNorm2d(out_channels))


class _ResidualBlock(nn.Module):
    """relu(residual(x) + shortcut(x)); subclasses build the two paths. The residual path's BatchNorm-ReLU pairs,
    and its last BatchNorm with the add and the ReLU, run as fused CPU kernels where they can
    (:mod:`simclrv2.models.bn_relu`), and so does the sum of x's two gradients (:mod:`simclrv2.models.branch`)."""

    expansion = 1
    residual: FusingSequential
    shortcut: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        to_residual, to_shortcut = branch(x)
        return self.residual.forward_add_relu(to_residual, self.shortcut(to_shortcut))


class BasicBlock(_ResidualBlock):
    """Two 3×3 convs (ResNet-18/34); with SK the first one is the SK conv."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, sk_ratio: float,
                 tf_pooling: bool = False) -> None:
        super().__init__()
        self.residual = FusingSequential(
            *_spatial_conv(in_channels, channels, stride, sk_ratio),
            _conv(channels, channels, 3),
            _zero_bn(channels),
        )
        self.shortcut = _shortcut(in_channels, channels, stride, sk_ratio, tf_pooling)


class Bottleneck(_ResidualBlock):
    """1×1 reduce, 3×3 (or SK) at the block's stride, 1×1 expand to 4C (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, sk_ratio: float,
                 tf_pooling: bool = False) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.residual = FusingSequential(
            *_conv_bn_relu(in_channels, channels, 1),
            *_spatial_conv(channels, channels, stride, sk_ratio),
            _conv(channels, out_channels, 1),
            _zero_bn(out_channels),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride, sk_ratio, tf_pooling)


ARCHITECTURES: dict[int, tuple[type, list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def scaled_channels(base: float, width_multiplier: float) -> int:
    """round(base · w), at least 1."""
    return max(1, int(round(base * width_multiplier)))


def _stem(in_channels: int, width_multiplier: float, sk_ratio: float, cifar_stem: bool,
          tf_pooling: bool) -> FusingSequential:
    out = scaled_channels(STEM_CHANNELS, width_multiplier)
    if cifar_stem:
        # Small images keep their resolution: one 3×3 stride-1 conv and no max-pool, with or without SK.
        return FusingSequential(*_conv_bn_relu(in_channels, out, 3))
    if sk_ratio > 0:
        # ResNet-D stem (He et al., 2018): three 3×3 convs, the first strided, in place of the 7×7: a deeper,
        # more non-linear stem; widths 64w/2, 64w/2, 64w as in the authors' code.
        half = scaled_channels(STEM_CHANNELS / 2, width_multiplier)
        layers = [
            *_conv_bn_relu(in_channels, half, 3, stride=2),
            *_conv_bn_relu(half, half, 3),
            *_conv_bn_relu(half, out, 3),
        ]
    else:
        layers = _conv_bn_relu(in_channels, out, 7, 2)
    return FusingSequential(*layers, stem_pool(tf_pooling))


class ResNet(nn.Module):
    """Stem, four stages of residual blocks, global average pool; no classifier (the head and classifier are
    separate modules so that fine-tuning can start at any head layer)."""

    def __init__(
        self,
        block: type,
        layers: list[int],
        width_multiplier: float = 1,
        sk_ratio: float = 0.0,
        cifar_stem: bool = False,
        in_channels: int = 3,
        tf_pooling: bool = False,
    ) -> None:
        super().__init__()
        self.stem = _stem(in_channels, width_multiplier, sk_ratio, cifar_stem, tf_pooling)
        channels_in = scaled_channels(STEM_CHANNELS, width_multiplier)
        stages = []
        for index, (base, num_blocks) in enumerate(zip(STAGE_CHANNELS, layers, strict=True)):
            channels = scaled_channels(base, width_multiplier)
            blocks = []
            for i in range(num_blocks):
                stride = 2 if index > 0 and i == 0 else 1
                blocks.append(block(channels_in, channels, stride, sk_ratio, tf_pooling))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim: int = channels_in
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # BN γ = 1 and β = 0 are PyTorch's defaults; the zero γ of each block's last BN was set in _zero_bn.

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images → (B, feature_dim) globally average-pooled encoder output."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


def resnet(
    depth: int,
    width_multiplier: float = 1,
    sk_ratio: float = 0.0,
    cifar_stem: bool = False,
    in_channels: int = 3,
    tf_pooling: bool = False,
) -> ResNet:
    """ResNet-``depth`` encoder, e.g. ``resnet(152, 3, sk_ratio=0.0625)`` for SimCLRv2's R152-3x-SK.

    ``tf_pooling`` pads the stem's max-pool and the ResNet-D average pools as the authors' TensorFlow code does
    (:mod:`simclrv2.models.tf_pooling`): what networks imported from their checkpoints need to give the same
    outputs. It adds no parameters.
    """
    if depth not in ARCHITECTURES:
        valid = ", ".join(str(d) for d in ARCHITECTURES)
        raise SimCLRv2Error(f"unknown ResNet depth {depth!r}; choose one of {valid}")
    if not (isinstance(width_multiplier, (int, float)) and 0 < width_multiplier < math.inf):
        raise SimCLRv2Error(f"width_multiplier must be a number > 0, got {width_multiplier!r}")
    if not (isinstance(sk_ratio, (int, float)) and 0.0 <= sk_ratio < 1.0):
        raise SimCLRv2Error(f"sk_ratio must be in [0, 1) (0 disables Selective Kernels), got {sk_ratio!r}")
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise SimCLRv2Error(f"in_channels must be an integer >= 1 (1: grey, 3: RGB), got {in_channels!r}")
    block, layers = ARCHITECTURES[depth]
    return ResNet(block, layers, width_multiplier, sk_ratio, bool(cifar_stem), in_channels, bool(tf_pooling))
