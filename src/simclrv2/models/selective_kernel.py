"""Selective Kernels (Li et al., 2019, arXiv 1903.06586) as SimCLRv2 uses them, and the ResNet-D shortcut.

SimCLRv2's SK conv is a single 3×3 conv with 2C outputs split into two C-channel streams; a small gate looks
at the whole image and picks, per channel, a soft mix of the two. Networks with SK also down-sample their
shortcut with an average pool instead of a strided 1×1 conv (ResNet-D, He et al., 2018, arXiv 1812.01187), so
the shortcut sees every input pixel rather than one in four.

On CPU the mix of the two streams and the spatial mean its gate reads run as compiled kernels (``kernels/sk_mix.cpp``,
one pass over memory each; :func:`mix_streams`), where PyTorch's ops took ~18 % of a width-0.25 bf16 pretraining step.

BatchNorm layers use PyTorch's defaults, which are docs/recipe.md#encoder's eps 1e-5 and momentum 0.1 (TF decay 0.9).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from simclrv2.models.bn_relu import FusingSequential, batch_norm_relu
from simclrv2.models.conv import Conv2d
from simclrv2.models.cpu_kernels import active_kernels
from simclrv2.models.tf_pooling import resnet_d_pool

MIN_GATE_DIM = 32  # the reference's floor on the gate's hidden width; keeps narrow stages from a 1-wide gate
# Whether the mix may run as the compiled kernel (kernels/sk_mix.cpp) where it can: read at call time, so that a
# benchmark or test can run the PyTorch formulation in its place.
COMPILED_MIX = True
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


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
        batch, c = streams.shape[0], self.channels
        kernels = _mix_kernels_for(streams)
        context = _SpatialMean.apply(streams, kernels).view(batch, 2, c).sum(dim=1)  # mean of the streams' sum: (B, C)
        logits = self.gate(context.view(batch, c, 1, 1))  # (B, 2C, 1, 1)
        weights = logits.view(batch, 2, c, 1, 1).softmax(dim=1)  # softmax over the two streams
        return mix_streams(streams, weights, kernels)


def mix_streams(streams: Tensor, weights: Tensor, kernels: Any = None) -> Tensor:
    """a·w_a + b·w_b for the halves a, b of (B, 2C, H, W) streams and (B, 2, C, 1, 1) softmax weights, in the
    streams' dtype: by the compiled ``kernels`` (one pass over memory each way, the weights kept float32) where
    :func:`_mix_kernels_for` gives them, else by PyTorch ops with the weights in the streams' dtype."""
    if kernels is not None:
        return _CompiledMix.apply(streams, weights, kernels)
    return _MixStreams.apply(streams, weights.to(streams.dtype))


def _mix_kernels_for(streams: Tensor) -> Any:
    """The compiled kernels where they may mix these streams (CPU, channels_last float32 or bfloat16, eager), else
    None: under torch.compile the PyTorch formulation traces into the graph, a call into the extension would break
    it."""
    if not COMPILED_MIX or torch.compiler.is_compiling() or torch.jit.is_scripting():
        return None
    kernels = active_kernels()
    if (kernels is None or streams.device.type != "cpu" or streams.dtype not in _KERNEL_DTYPES or streams.dim() != 4
            or not streams.is_contiguous(memory_format=torch.channels_last)):
        return None
    return kernels


def _pair(streams: Tensor) -> Tensor:
    """(B, 2C, H, W) as (B, 2, C, H, W), a view in NCHW and in channels_last alike (it splits the channel dim)."""
    batch, channels, height, width = streams.shape
    return streams.view(batch, 2, channels // 2, height, width)


class _SpatialMean(torch.autograd.Function):
    """Mean over H and W whose gradient stays a broadcast view: autograd's own writes a full (B, 2C, H, W) tensor
    only to add it to the mix's gradient of the same streams. With the compiled ``kernels`` the mean is summed in
    float32 in one pass (PyTorch's mean of bf16 streams first copies them whole to float32), then rounded to the
    streams' dtype as PyTorch's is, for a gate that may hold that dtype's weights."""

    @staticmethod
    def forward(ctx: Any, streams: Tensor, kernels: Any) -> Tensor:
        ctx.shape, ctx.dtype = streams.shape, streams.dtype
        if kernels is None:
            return streams.mean(dim=(2, 3))
        return kernels.spatial_mean(streams).to(streams.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        height, width = ctx.shape[2:]
        return (grad / (height * width)).to(ctx.dtype)[:, :, None, None].expand(ctx.shape), None


class _MixStreams(torch.autograd.Function):
    """a·w_a + b·w_b for the two halves of (B, 2C, H, W) streams and (B, 2, C, 1, 1) weights. Its backward makes
    both halves' gradients in one pass, laid out (B, H, W, 2, C), which is the streams' channels_last layout, where
    autograd's version of chunk-multiply-add makes each half separately and then concatenates them."""

    @staticmethod
    def forward(ctx: Any, streams: Tensor, weights: Tensor) -> Tensor:
        pair = _pair(streams)
        ctx.save_for_backward(streams, weights)
        return torch.mul(pair[:, 0], weights[:, 0]).addcmul_(pair[:, 1], weights[:, 1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        streams, weights = ctx.saved_tensors
        batch, channels = grad.shape[:2]
        per_pixel = grad.permute(0, 2, 3, 1).unsqueeze(3)  # (B, H, W, 1, C)
        pair = streams.permute(0, 2, 3, 1).unflatten(3, (2, channels))  # (B, H, W, 2, C), a view
        grad_streams = (per_pixel * weights.view(batch, 1, 1, 2, channels)).flatten(3).permute(0, 3, 1, 2)
        grad_weights = (per_pixel * pair).sum(dim=(1, 2)).view_as(weights)
        return grad_streams, grad_weights


class _CompiledMix(torch.autograd.Function):
    """:func:`mix_streams` by ``kernels/sk_mix.cpp``: the forward reads the streams once and writes the output once,
    where PyTorch's multiply and in-place multiply-add read the output again; the backward makes the streams' gradient
    and sums the weights' in one pass over the output's gradient and the streams."""

    @staticmethod
    def forward(ctx: Any, streams: Tensor, weights: Tensor, kernels: Any) -> Tensor:
        gate = weights.reshape(streams.shape[0], streams.shape[1]).float().contiguous()  # (B, 2C): a then b
        ctx.save_for_backward(streams, gate)
        ctx.kernels, ctx.weights_dtype, ctx.weights_shape = kernels, weights.dtype, weights.shape
        return kernels.sk_mix_forward(streams, gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        streams, gate = ctx.saved_tensors
        grad = grad.to(streams.dtype).contiguous(memory_format=torch.channels_last)
        grad_streams, grad_gate = ctx.kernels.sk_mix_backward(grad, streams, gate)
        return grad_streams, grad_gate.view(ctx.weights_shape).to(ctx.weights_dtype), None


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
