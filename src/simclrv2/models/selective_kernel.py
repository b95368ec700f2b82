"""Selective Kernels (Li et al., 2019, arXiv 1903.06586) as SimCLRv2 uses them, and the ResNet-D shortcut.

SimCLRv2's SK conv is a single 3×3 conv with 2C outputs split into two C-channel streams; a small gate looks
at the whole image and picks, per channel, a soft mix of the two. Networks with SK also down-sample their
shortcut with an average pool instead of a strided 1×1 conv (ResNet-D, He et al., 2018, arXiv 1812.01187), so
the shortcut sees every input pixel rather than one in four.

BatchNorm layers use PyTorch's defaults, which are docs/recipe.md#encoder's eps 1e-5 and momentum 0.1 (TF decay 0.9).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simclrv2.models.bn_relu import FusingSequential, batch_norm_relu
from simclrv2.models.conv import Conv2d
from simclrv2.models.tf_pooling import resnet_d_pool

MIN_GATE_DIM = 32  # the reference's floor on the gate's hidden width; keeps narrow stages from a 1-wide gate


def gate_dim(channels: int, sk_ratio: float) -> int:
    """Hidden width of the SK gate: max(int(C · sk_ratio), 32)."""
    return max(int(channels * sk_ratio), MIN_GATE_DIM)


class SelectiveKernelConv(nn.Module):
    """3×3 conv to 2C channels → BN-ReLU → two C-channel streams mixed by a per-image, per-channel soft gate.

    The output is already normalised and activated (the BN-ReLU sits before the split), so in a residual block
    it replaces the whole "3×3 conv + BN + ReLU" unit.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, sk_ratio: float) -> None:
        super().__init__()
        self.channels = channels
        self.conv = Conv2d(in_channels, 2 * channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2 * channels)
        hidden = gate_dim(channels, sk_ratio)
        self.gate = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2 * channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        streams = batch_norm_relu(self.conv(x), self.bn)  # (B, 2C, H, W); fused on CPU where it can be
        a, b = streams.chunk(2, dim=1)  # (B, C, H, W) each
        context = (a + b).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        logits = self.gate(context)  # (B, 2C, 1, 1)
        weight_a, weight_b = torch.stack(logits.chunk(2, dim=1)).softmax(dim=0)  # over the two streams
        return a * weight_a + b * weight_b


class AvgPoolShortcut(FusingSequential):
    """ResNet-D projection shortcut: 2×2 average pool at the block's stride (if > 1), 1×1 conv, BN (the BN through
    the compiled kernel where it can be, :class:`FusingSequential`).

    The pool's ``ceil_mode`` makes the pooled size match the strided 3×3 conv of the residual branch on odd
    inputs (7 px → 4 px), where a floor would drop the last row and column and the sum would fail. With
    ``tf_pooling`` the pool is padded as in the authors' TensorFlow code (:func:`resnet_d_pool`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, tf_pooling: bool = False) -> None:
        pool = resnet_d_pool(stride, tf_pooling)
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        super().__init__(pool, conv, nn.BatchNorm2d(out_channels))
