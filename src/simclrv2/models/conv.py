"""A 2-D convolution whose CPU passes run where they measured fastest: oneDNN's kernels, GEMMs over the input's
patches (:mod:`simclrv2.models.conv_gemm`) or our compiled kernels, as the rules of
:mod:`simclrv2.models.conv_rules` say. This module plans each call and runs it; why each rule holds is below and
beside the rules.

On CPUs, oneDNN's bf16 convolutions fall far below the machine's GEMM peak on the tiny maps of ResNet's last
stages at 28-32 px inputs. On a 2-core AMX Xeon at batch 512 (``benchmarks/conv_shapes.py`` times every pass
both ways), a 512->512 3×3 conv on 4×4 maps took 44 ms forward, 45 ms backward-data and 150 ms backward-weights
in oneDNN against 25, 27 and 27 ms as GEMMs over its patches (an im2col laid out channels-last, so a
channels_last input is copied in runs of its channels). The patches cost a copy of nine times the input whatever
the product's width, so the GEMM pays only where that width is large: at 256 channels on 4×4 maps oneDNN's
forward was faster, while its weight gradient was slower at every width. ``conv_rules.GEMM_RULES`` holds what
was measured; a pass runs as a GEMM, in bf16/fp16 on a CPU where oneDNN runs AMX, where a rule covers it
(on oneDNN's AVX-512-BF16 kernels, the same CPU capped below AMX, the GEMMs measured slower):

- forward ``patches @ W^T``;
- backward-data (stride 1) as the forward of the output gradient with the flipped, transposed kernel; at stride
  2 as one GEMM per phase of the input (its even and odd rows and columns: each phase reads only the kernel taps
  that reach it, so every input pixel is one fp32 sum rounded once, where a single GEMM over all nine taps would
  sum nine bf16-rounded overlapping parts);
- backward-weights ``grad^T @ patches``, from the patches forward made when forward is a GEMM too.

A one-channel stem (grayscale images) is the exception: oneDNN is slow for one input channel in every dtype on
every CPU kind measured, so its forward and weight gradient are GEMMs in fp32 too (``SINGLE_CHANNEL_MIN_OUT``). The
patches and the gradient's transpose are the compiled kernels' (:mod:`simclrv2.models.cpu_kernels`) where they are
on, PyTorch's copies otherwise. The other is fp32 where oneDNN runs its AVX2 kernels: there the weight gradient onto
the last stage's 4×4 maps from 256 outputs is a GEMM (``FP32_AVX2_GEMM_RULES``).

Some shapes run our own kernels instead (``conv_rules.direct_passes``; :mod:`simclrv2.models.cpu_kernels`, eager only):
a one-channel stem with fewer outputs than that, forward and weight gradient in fp32 and bf16 (the forward one sweep
over the output at memory speed); on AVX2 or AVX-512, an fp32 16->16 3×3 convolution (width 0.25's first
stage), forward and input gradient, where oneDNN reached 60-70 % of the fp32 peak and the direct kernel ~86 %
(AVX-512); and in fp32 where oneDNN runs its AVX2 kernels, 3×3 stride-1 convolutions from 16 channels by
Winograd's F(4×4, 3×3) or F(2×2, 3×3) (:mod:`simclrv2.models.winograd`, ``FP32_AVX2_WINOGRAD_RULES``), which need 4x
or 2.25x fewer multiplications than oneDNN's direct kernels, already near the machine's peak there (these take the
16-channel layer's passes from the direct kernel too); on a CPU with AVX-512-BF16 and no AMX (AMD's Zen 4, which
splits each 512-bit FMA in two, and Zen 5, where they still measured faster), fp32 3×3 stride-1 convolutions from 32
channels by F(4×4, 3×3) as well (``FP32_AVX512_BF16_WINOGRAD_RULES``).

Every product is an fp32 sum of the same bf16 products rounded once to the output dtype, as oneDNN's; parameters
and state dict are those of :class:`torch.nn.Conv2d`, and anything else (other fp32 convolutions, GPUs, groups,
dilation, bias, larger maps) is :class:`torch.nn.Conv2d` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.models import winograd
from simclrv2.models.conv_gemm import (
    conv_by_gemm,
    input_grad_as_gemms,
    patch_kernels_for,
    weight_grad_by_gemm,
    weight_grad_from_patches,
)
from simclrv2.models.conv_rules import direct_passes, gemm_passes, winograd_tile
from simclrv2.models.cpu_kernels import active_kernels


def _grad_by_onednn(which: int, grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """oneDNN's input (``which`` 0) or weight (1) gradient alone, as autograd asks for it."""
    mask = (which == 0, which == 1, False)
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, (stride, stride), (padding, padding),
                                               (1, 1), False, (0, 0), 1, mask)[which]


class _CpuConv(torch.autograd.Function):
    """conv2d whose ``passes`` run as GEMMs over patches, ``direct`` passes as the compiled direct kernels and the
    others as oneDNN's kernels. Keeps for backward only what the gradients it will compute need: forward's patches
    for a GEMM weight gradient, x where a pass reads it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, stride: int, padding: int, passes: frozenset[str],
                direct: frozenset[str] = frozenset()) -> Tensor:
        cols = None
        if "forward" in direct:
            out = _direct_forward(x, weight, padding)
        elif "forward" in passes:
            out, cols = conv_by_gemm(x, weight, stride, padding)
        else:
            out = F.conv2d(x, weight, None, stride, padding)
        needs_grad_x, needs_grad_w = ctx.needs_input_grad[:2]
        x_free_grad_x = "backward-data" in passes or "backward-data" in direct  # input gradients not reading x
        gemm_grad_w = needs_grad_w and "backward-weights" in passes and "backward-weights" not in direct
        keep_cols = gemm_grad_w and cols is not None
        needs_x = (needs_grad_x and not x_free_grad_x) or (needs_grad_w and not keep_cols)
        ctx.save_for_backward(cols if keep_cols else None, weight, x if needs_x else None)
        ctx.stride, ctx.padding, ctx.passes, ctx.direct = stride, padding, passes, direct
        ctx.input_size = tuple(x.shape[-2:])
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        cols, weight, x = ctx.saved_tensors
        s, p, passes, direct = ctx.stride, ctx.padding, ctx.passes, ctx.direct
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if "backward-data" in direct:
                grad_x = _direct_input_grad(grad_out, weight)
            elif "backward-data" in passes:
                grad_x = input_grad_as_gemms(grad_out, weight, s, p, ctx.input_size)
            else:
                grad_x = _grad_by_onednn(0, grad_out, x, weight, s, p)
        if ctx.needs_input_grad[1]:
            if "backward-weights" in direct:
                grad_w = _direct_weight_grad(x, grad_out, weight, p)
            elif "backward-weights" not in passes:
                grad_w = _grad_by_onednn(1, grad_out, x, weight, s, p)
            elif cols is not None:
                grad_w = weight_grad_from_patches(grad_out, cols, weight.shape)
            else:
                grad_w = weight_grad_by_gemm(x, grad_out, weight.shape[-1], s, p)
        return grad_x, grad_w, None, None, None, None


def _direct_kernels() -> Any:
    """The compiled kernels, on whenever a direct pass was planned (a session switches them once, before training)."""
    kernels = active_kernels()
    if kernels is None:
        raise RuntimeError("a direct convolution pass was planned in forward but the compiled CPU kernels were "
                           "switched off before its backward: switch them (use_fused_kernels) between steps only")
    return kernels


def _direct_kernel(name: str, kernel_size: int, padding: int, in_channels: int, out_channels: int,
                   dtype: torch.dtype, kernels: Any) -> tuple[str, int | None]:
    """Which of our kernels runs pass ``name`` of a shape ``direct_passes`` gave them: ("stem", None) for one
    input channel, ("winograd", m) where a Winograd rule covers the pass, else ("direct-16", None). The one choice
    that the passes below make and that ``simclrv2 info`` names."""
    if in_channels == 1:
        return "stem", None
    tile = winograd_tile(name, kernel_size, padding, in_channels, out_channels, dtype, kernels)
    return ("winograd", tile) if tile is not None else ("direct-16", None)


def _direct_weight_grad(x: Tensor, grad_out: Tensor, weight: Tensor, padding: int) -> Tensor:
    """The weight gradient of a shape ``direct_passes`` gives to our kernels: a stem's, or Winograd's; in the
    weight's dtype."""
    kernels = _direct_kernels()
    kind, tile = _direct_kernel("backward-weights", weight.shape[-1], padding, x.shape[1], grad_out.shape[1],
                                x.dtype, kernels)
    if kind == "stem":
        return kernels.stem_conv_weight_grad(x, grad_out, weight.shape[-1], padding).to(weight.dtype)
    return winograd.weight_grad(kernels, x, grad_out, tile)


def _direct_forward(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """The forward of a shape ``direct_passes`` gives to our kernels: the stem's, Winograd's or the 16-channel
    one."""
    kernels = _direct_kernels()
    kind, tile = _direct_kernel("forward", weight.shape[-1], padding, x.shape[1], weight.shape[0], x.dtype, kernels)
    if kind == "stem":
        return kernels.stem_conv_forward(x, weight, padding)
    if kind == "winograd":
        return winograd.forward(kernels, x, weight, tile)
    return kernels.direct_conv3x3(x, weight, False)


def _direct_input_grad(grad_out: Tensor, weight: Tensor) -> Tensor:
    """The input gradient of a shape ``direct_passes`` gives to our kernels (all 3×3 with padding 1): Winograd's or
    the 16-channel one."""
    kernels = _direct_kernels()
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    kind, tile = _direct_kernel("backward-data", 3, 1, weight.shape[1], weight.shape[0], grad_out.dtype, kernels)
    if kind == "winograd":
        return winograd.input_grad(kernels, grad_out, weight, tile)
    return kernels.direct_conv3x3(grad_out, weight, True)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a CPU convolution of ``x`` computes in: autocast's where it is on (float64 stays float64)."""
    if torch.is_autocast_enabled("cpu") and x.dtype != torch.float64:
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _direct_engine(name: str, conv: nn.Conv2d, dtype: torch.dtype) -> str:
    """The name ``simclrv2 info`` gives the kernel of ours that runs a pass ``direct_passes`` gave them."""
    kind, tile = _direct_kernel(name, conv.kernel_size[0], conv.padding[0], conv.in_channels, conv.out_channels,
                                dtype, active_kernels())
    return {"stem": "stem kernel", "winograd": f"Winograd F({tile}x{tile})",
            "direct-16": "direct 16-channel kernel"}[kind]


def _library_engine(x: Tensor) -> str:
    """The library PyTorch hands a convolution of ``x`` to when ours do not take it: oneDNN on the CPU, cuDNN on
    CUDA where it is on (it is, unless switched off), else PyTorch's own kernels."""
    if x.device.type == "cpu":
        return "oneDNN"
    if x.device.type == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
        return "cuDNN"
    return "PyTorch"


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (same parameters and checkpoints) whose passes run on CPU as GEMMs over patches
    where ``conv_rules.GEMM_RULES`` says they are faster than oneDNN's, or as our kernels (direct or Winograd) where
    ``conv_rules.direct_passes`` does."""

    def _plan(self, x: Tensor, dtype: torch.dtype) -> tuple[frozenset[str], frozenset[str]]:
        """The passes of this call that run as GEMMs and those that run the direct kernels (only passes that will
        run: no backward without grad)."""
        none = frozenset(), frozenset()
        if x.device.type != "cpu" or x.dim() != 4:
            return none
        if self.groups != 1 or self.dilation != (1, 1) or self.bias is not None or self.padding_mode != "zeros":
            return none
        k, (s, s_w), (p, p_w) = self.kernel_size, self.stride, self.padding
        if k[0] != k[1] or s != s_w or not isinstance(p, int) or p != p_w or p >= k[0]:
            return none
        ho, wo = ((size + 2 * p - k[0]) // s + 1 for size in x.shape[-2:])
        layout_kernels = patch_kernels_for(x)
        passes = gemm_passes(s, ho * wo, self.in_channels, self.out_channels, dtype,
                             compiled_layouts=layout_kernels is not None)
        direct = direct_passes(s, k[0], p, self.in_channels, self.out_channels, dtype, layout_kernels)
        if not (torch.is_grad_enabled() and x.requires_grad):
            passes, direct = passes - {"backward-data"}, direct - {"backward-data"}
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            passes, direct = passes - {"backward-weights"}, direct - {"backward-weights"}
        return passes - direct, direct

    def engines(self, x: Tensor) -> dict[str, str]:
        """Where each pass of a call on ``x`` runs, by the same plan as :meth:`forward`: "oneDNN", "GEMM", a kernel
        of ours ("Winograd F(4x4)", "direct 16-channel kernel", "stem kernel"), or off the CPU "cuDNN" ("PyTorch"
        where cuDNN is off); passes that will not run (no gradient asked) are left out. What ``simclrv2 info``
        prints."""
        dtype = _compute_dtype(x)
        passes, direct = self._plan(x, dtype)
        will_run = ["forward"]
        if torch.is_grad_enabled() and x.requires_grad:
            will_run.append("backward-data")
        if torch.is_grad_enabled() and self.weight.requires_grad:
            will_run.append("backward-weights")
        library = _library_engine(x)
        return {name: _direct_engine(name, self, dtype) if name in direct else "GEMM" if name in passes else library
                for name in will_run}

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        passes, direct = self._plan(x, dtype)
        if not passes and not direct:
            return super().forward(x)
        # cast as autocast would for conv2d; the Function then runs outside autocast
        x, weight = x.to(dtype), self.weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _CpuConv.apply(x, weight, self.stride[0], self.padding[0], passes, direct)
