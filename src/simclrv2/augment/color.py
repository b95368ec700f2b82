"""Colour distortion for whole batches: the four jitter operations, random order per image, grayscale.

Every operation takes per-image parameters as (B,) tensors and clips to [0, 1], as the reference does after
each step. On one-channel images saturation, hue and grayscale are no-ops (docs/recipe.md#augmentation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from simclrv2.augment._inputs import check_probability
from simclrv2.errors import SimCLRv2Error

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # op k of ``sample_jitter``'s order and params
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _per_image(values: Tensor) -> Tensor:
    return values.reshape(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1): broadcasts over C, H, W


def _luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) grey level: 0.299 R + 0.587 G + 0.114 B, or the image itself when it has one channel."""
    if x.shape[1] == 1:
        return x
    return x[:, 0:1].mul(LUMA[0]).add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotates hue by ``shift`` turns in HSV (shift ∈ [−0.5, 0.5] spans the circle), keeping V and S.

    RGB -> HSV: V = max, C = max − min, hue t (in sixths of a turn) = (G − B)/C, (B − R)/C + 2 or (R − G)/C + 4
    when R, G or B is the max. Then t ← (t + 6·shift) mod 6 and, with m = V − C:
    R = m + C·clip(|t − 3| − 1, 0, 1), G = m + C·clip(2 − |t − 2|, 0, 1), B = m + C·clip(2 − |t − 4|, 0, 1).
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)  # each (B, H, W)
    value, low = x.amax(dim=1), x.amin(dim=1)  # max(dim) with indices is ~20x slower on CPU
    chroma = value - low
    # Where two channels tie for the max both formulas agree, so the G test needs no "and R is not the max".
    # Selection by lerp with 0/1 weights: torch.where is ~10x slower on CPU.
    sixths = torch.lerp((r - g).add_(chroma, alpha=4), (b - r).add_(chroma, alpha=2), (g == value).to(x.dtype))
    sixths = torch.lerp(sixths, g - b, (r == value).to(x.dtype))
    sixths = sixths.div_(chroma).nan_to_num_(0.0)  # grey pixels: 0/0, and any hue will do as C = 0
    sixths = torch.remainder(sixths.add_(6 * shift.reshape(-1, 1, 1).to(x.dtype)), 6)
    out = torch.empty_like(x)
    for channel, (centre, sign, offset) in enumerate(((3.0, 1, -1.0), (2.0, -1, 2.0), (4.0, -1, 2.0))):
        ramp = (sixths - centre).abs_().mul_(sign).add_(offset).clamp_(0, 1)  # clip(±|t − centre| + offset)
        torch.addcmul(low, ramp, chroma, out=out[:, channel])
    return out.clamp_(0, 1)


def jitter_ranges(strength: float) -> tuple[Tensor, Tensor]:
    """(4,) lower and upper bounds of brightness, contrast, saturation and hue for jitter strength s.

    Brightness U[max(0, 1 − 0.8s), 1 + 0.8s], contrast and saturation U[1 − 0.8s, 1 + 0.8s] (floored at 0 as
    well: identical to the paper's for s <= 1.25, and a negative factor would invert the image), hue U[−0.2s, 0.2s].
    """
    if strength < 0:
        raise SimCLRv2Error(f"jitter strength = {strength!r} must be >= 0 (0.5 small images, 1.0 ImageNet)")
    low, high = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    return torch.tensor([low, low, low, -0.2 * strength]), torch.tensor([high, high, high, 0.2 * strength])


def sample_jitter(n: int, strength: float, prob: float, generator: torch.Generator,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Per-image jitter parameters: ``order`` (n, 4) int64 and ``params`` (n, 4) float32.

    order[i] is a uniformly random permutation of the ops (order[i, k] = op applied k-th; indices into
    ``JITTER_OPS``), or all −1 for an image left alone (probability 1 − prob).
    params[i, op] ~ U[jitter_ranges(strength)].
    """
    check_probability("jitter probability", prob)
    device = torch.device(device) if device is not None else generator.device
    draw = dict(generator=generator, device=device)
    low, high = (bound.to(device) for bound in jitter_ranges(strength))
    params = torch.rand(n, 4, **draw) * (high - low) + low
    order = torch.rand(n, 4, **draw).argsort(dim=1)  # argsort of i.i.d. uniforms: a uniform permutation
    applied = torch.rand(n, 1, **draw) < prob
    return torch.where(applied, order, -1), params


def apply_jitter_(x: Tensor, order: Tensor, params: Tensor) -> Tensor:
    """Applies each image's ops in its own order (see ``sample_jitter``), clipping after each, in place: the
    batch belongs to the caller (saves a full-batch allocation).

    Brightness is multiplicative, clip(f·x, 0, 1) (docs/recipe.md#colour-distortion); contrast blends with the
    image's mean grey level (torchvision's convention) and saturation with each pixel's grey level. So per slot
    k all three are clip(f·x + (1 − f)·ref) with ref = 0, the mean grey level or the grey image, and one fused
    pass serves every image (f = 1 for images whose k-th op is something else leaves them exactly unchanged);
    hue runs on the subset of images whose k-th op it is.
    """
    rgb = x.shape[1] == 3
    for slot in range(4):
        op = order[:, slot]  # (B,)
        linear = (op >= 0) & (op < (HUE if rgb else SATURATION))
        factor = _per_image(torch.where(linear, params.gather(1, op.clamp(min=0)[:, None]).squeeze(1), 1.0))
        grey = _luma(x)
        # bias = (1 − f)·ref: ref = the mean grey level for contrast, the grey image for saturation, else 0.
        bias = grey.mean(dim=(1, 2, 3), keepdim=True) * (1 - factor) * _per_image(op == CONTRAST)
        if rgb:
            bias = (grey * ((1 - factor) * _per_image(op == SATURATION))).add_(bias)  # (B, 1, H, W)
        x.mul_(factor).add_(bias).clamp_(0, 1)  # f = 1 and bias = 0 leave x exactly as it was
        if rgb:
            chosen = (op == HUE).nonzero().squeeze(1)
            if chosen.numel():
                x.index_copy_(0, chosen, adjust_hue(x.index_select(0, chosen), params[chosen, HUE]))
    return x


def to_grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma, repeated to 3 channels for RGB input (models keep their input width); 1 channel: x."""
    if x.shape[1] == 1:
        return x
    return _luma(x).expand(-1, 3, -1, -1).contiguous()


def random_grayscale_(x: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Turns each image grey with probability ``prob``, in place (a no-op on one-channel images)."""
    check_probability("grayscale probability", prob)
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < prob
    if x.shape[1] == 1:
        return x
    chosen = chosen.nonzero().squeeze(1)  # a subset: ~5x less work than a where over the batch at p = 0.2
    return x.index_copy_(0, chosen, to_grayscale(x.index_select(0, chosen)))
