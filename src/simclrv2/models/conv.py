"""A 2-D convolution whose weight gradient on small feature maps is one matrix multiply.

On CPUs, oneDNN's bf16 backward-weights kernel runs far below the machine's GEMM peak when the output map is
tiny (ResNet's last stage on 28-32 px inputs works on 4×4 maps): on a 2-core AMX Xeon at batch 512, ~290 GFLOP/s
against ~860 for the same product written as (Co, N·Ho·Wo) @ (N·Ho·Wo, k·k·Ci) over the input's patches, while
forward and backward-data run at ~900 (``benchmarks/conv_shapes.py``, which times both). On 7×7 maps and larger,
and in fp32, oneDNN's kernel is as fast or faster. So in bf16/fp16 on CPU, for maps of at most
``GEMM_WEIGHT_GRAD_MAX_AREA`` pixels, the weight gradient is that GEMM; forward and the input gradient stay
oneDNN's. Parameters, state dict and numerics (fp32 sums of the same products, rounded to the same dtype) are
those of :class:`torch.nn.Conv2d`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The largest output map (Ho·Wo) whose weight gradient is computed as one GEMM: 4×4 is where it pays on the
# machine measured; 7×7 maps are already faster in oneDNN (see the module docstring).
GEMM_WEIGHT_GRAD_MAX_AREA = 16
# The dtypes it is used in: in fp32 oneDNN's weight gradient measured as fast.
REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def weight_grad_by_gemm(x: Tensor, grad_out: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """dL/dW of ``conv2d(x, W, stride, padding)`` (square kernel, no dilation, one group) as one GEMM.

    The patches are gathered channels-last (N, Ho, Wo, kh, kw, Ci), so a channels_last ``x`` is read in order.
    Returns the gradient in W's shape (Co, Ci, kh, kw), laid out channels-last like the encoder's weights.
    """
    n, ci = x.shape[:2]
    co, ho, wo = grad_out.shape[1:]
    padded = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # N, H + 2p, W + 2p, Ci
    patches = padded.unfold(1, kernel_size, stride).unfold(2, kernel_size, stride)  # N, Ho, Wo, Ci, kh, kw
    patches = patches[:, :ho, :wo].permute(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kernel_size * kernel_size * ci)
    grad = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, co)
    return (grad.t() @ patches).view(co, kernel_size, kernel_size, ci).permute(0, 3, 1, 2)


class _GemmWeightGradConv(torch.autograd.Function):
    """conv2d with oneDNN's forward and input gradient and :func:`weight_grad_by_gemm` for the weight's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, (s, s), (p, p), (1, 1), False, (0, 0), 1, (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_by_gemm(x, grad_out, weight.shape[-1], s, p)
        return grad_x, grad_w, None, None


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (same parameters and checkpoints) that takes the GEMM weight gradient on CPU in
    bf16/fp16 when the output map is at most ``GEMM_WEIGHT_GRAD_MAX_AREA`` pixels and the weight needs a
    gradient."""

    def _gemm_weight_grad(self, x: Tensor, dtype: torch.dtype) -> bool:
        if not (x.device.type == "cpu" and dtype in REDUCED_PRECISION and self.weight.requires_grad
                and torch.is_grad_enabled()):
            return False
        if self.groups != 1 or self.dilation != (1, 1) or self.bias is not None or self.padding_mode != "zeros":
            return False
        k, (s, s_w), (p, p_w) = self.kernel_size, self.stride, self.padding
        if k[0] != k[1] or s != s_w or not isinstance(p, int) or p != p_w:
            return False
        ho, wo = ((size + 2 * p - k[0]) // s + 1 for size in x.shape[-2:])
        return ho * wo <= GEMM_WEIGHT_GRAD_MAX_AREA

    def forward(self, x: Tensor) -> Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast and x.dtype != torch.float64 else x.dtype
        if not self._gemm_weight_grad(x, dtype):
            return super().forward(x)
        # cast as autocast would for conv2d; the Function then runs outside autocast
        x, weight = x.to(dtype), self.weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _GemmWeightGradConv.apply(x, weight, self.stride[0], self.padding[0])
