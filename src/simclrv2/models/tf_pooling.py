"""Pooling padded as the authors' TensorFlow code pads it (``tf_pooling``), for networks imported from there.

Three places differ from PyTorch's usual pooling, each by where the padding goes or whether it is counted:

- the stem's 3×3 stride-2 max-pool uses TF's "SAME" padding: on an even side the one padded row and column
  sit at the bottom and right only, where ``nn.MaxPool2d(3, 2, padding=1)`` pads both sides, so every window
  is shifted by one pixel;
- the ResNet-D shortcut of a down-sampling block zero-pads the bottom and right by one before its 2×2 stride-2
  average, so on an odd side the last window averages one or two zeros (divided by 4, not by the pixels inside);
- the ResNet-D shortcut of the first block (stride 1, only the channels change) still averages 2×2 windows at
  stride 1 ("SAME", padding excluded from the mean) before its 1×1 conv, where ours applies no pooling.

The layers hold no parameters, so a network keeps its state-dict keys and parameter count with or without them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF's "SAME" on one side of ``size`` pixels: the extra pixel goes after."""
    out = -(-size // stride)  # ceil
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePaddingMaxPool2d(nn.Module):
    """3×3 stride-2 max-pool with TF's "SAME" padding (the stem's pool)."""

    kernel, stride = 3, 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = _same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = _same_padding(x.shape[-1], self.kernel, self.stride)
        # -inf, not 0: a padded pixel must never be the maximum (inputs after ReLU are >= 0, but not always)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class ZeroPaddedAvgPool2d(nn.Module):
    """2×2 stride-2 average after one zero row and column at the bottom and right (TF's ``fixed_padding``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 2)


class SamePaddingAvgPool2d(nn.Module):
    """2×2 stride-1 average with TF's "SAME" padding, which leaves the padding out of each mean.

    Replicating the last row and column gives exactly that mean for a 2×2 window: a window that hangs over
    the edge sees each of its inside pixels twice, so their average is unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)


def resnet_d_pool(stride: int, tf_pooling: bool) -> nn.Module:
    """The average pool in front of a ResNet-D shortcut's 1×1 conv."""
    if tf_pooling:
        return ZeroPaddedAvgPool2d() if stride > 1 else SamePaddingAvgPool2d()
    # ceil_mode: the size the strided 3×3 conv of the residual branch gives on odd sides (7 px -> 4 px)
    return nn.AvgPool2d(2, stride=stride, ceil_mode=True) if stride > 1 else nn.Identity()


def stem_pool(tf_pooling: bool) -> nn.Module:
    return SamePaddingMaxPool2d() if tf_pooling else nn.MaxPool2d(3, stride=2, padding=1)
