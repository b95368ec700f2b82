"""Random resized crops, flips and centre crops for whole batches: one ``grid_sample`` per batch.

Boxes are (top, left, h, w) in pixels, where pixel (i, j) covers [i, i + 1) x [j, j + 1). Resizing is bilinear
(the reference resizes bicubically; docs/recipe.md#augmentation) with border replication, so a crop never
darkens at the image edge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from simclrv2.augment._inputs import as_float_images, check_generator, check_probability, check_range, pair
from simclrv2.errors import SimCLRv2Error

CROP_ATTEMPTS = 100  # the reference's max_attempts (torchvision uses 10)
EVAL_CROP = 0.875  # the evaluation view: the central 87.5 % of the image, resized back
SMALL_IMAGE = 32  # images this small (CIFAR's size) are evaluated whole: a crop would cut away too much


def draw_crop_randoms(n: int, generator: torch.Generator, device: torch.device | str | None = None) -> Tensor:
    """(n, 2·100 + 2) uniforms: everything :func:`sample_crop_boxes` draws, in its order (area, aspect, offset).

    Drawing them apart from the image sizes lets a data loader draw a step's crops in the main process with the
    step's generator and size each box in a worker once the image header is read: the same boxes, the same
    generator state after the draw.
    """
    device = torch.device(device) if device is not None else generator.device
    check_generator(generator, device)
    draw = dict(generator=generator, device=device, dtype=torch.float32)
    area = torch.rand(n, CROP_ATTEMPTS, **draw)
    aspect = torch.rand(n, CROP_ATTEMPTS, **draw)
    offset = torch.rand(n, 2, **draw)
    return torch.cat([area, aspect, offset], dim=1)


def crop_boxes_from_randoms(randoms: Tensor, height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float]) -> Tensor:
    """(n, 4) float boxes (top, left, h, w) from :func:`draw_crop_randoms`' uniforms for an H × W image.

    Per attempt: area fraction a ~ U[scale], aspect r = exp(U[log ratio]); w = round(sqrt(a·H·W·r)),
    h = round(sqrt(a·H·W / r)); valid when 0 < h <= H and 0 < w <= W. Each image takes its first valid attempt
    of 100, or the whole image when none fits; then top ~ U{0 … H − h}, left ~ U{0 … W − w}.
    """
    check_range("crop scale", scale, 0.0, 1.0)
    check_range("crop ratio", ratio, 0.0)
    area = randoms[:, :CROP_ATTEMPTS] * (scale[1] - scale[0]) + scale[0]
    area = area * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(randoms[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS] * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(area * aspect).round()  # (n, attempts)
    h = torch.sqrt(area / aspect).round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid attempt (0 if none)
    found = valid.any(dim=1)
    h = torch.where(found, h.gather(1, first).squeeze(1), float(height))  # (n,)
    w = torch.where(found, w.gather(1, first).squeeze(1), float(width))
    offset = randoms[:, 2 * CROP_ATTEMPTS:]
    top = torch.minimum((offset[:, 0] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((offset[:, 1] * (width - w + 1)).floor(), width - w)
    return torch.stack([top, left, h, w], dim=1)


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator, device: torch.device | str | None = None) -> Tensor:
    """(n, 4) float boxes (top, left, h, w): random resized crop parameters, one box per image (see
    :func:`crop_boxes_from_randoms`; the 100 attempts per image are drawn at once as (n, 100) matrices)."""
    check_range("crop scale", scale, 0.0, 1.0)
    check_range("crop ratio", ratio, 0.0)
    return crop_boxes_from_randoms(draw_crop_randoms(n, generator, device), height, width, scale, ratio)


def resized_crop(images: Tensor, boxes: Tensor, out_size: int | tuple[int, int],
                 flip: Tensor | None = None) -> Tensor:
    """Crops box b of image b and resizes it to ``out_size`` (bilinear): one ``grid_sample`` for the batch.

    Output pixel (y, x) samples the source point (top + (y + ½)·h / H_out − ½, left + (x + ½)·w / W_out − ½)
    in pixel-centre coordinates (``F.interpolate``'s align_corners=False convention), which in grid_sample's
    normalised coordinates is the affine map u ↦ (w / W)·u + (2·left + w) / W − 1. ``flip`` (B,) bool mirrors
    chosen outputs horizontally for free by negating that scale.
    """
    x = as_float_images(images)
    n, c, height, width = x.shape
    out_h, out_w = pair(out_size, "out_size")
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    top, left, h, w = boxes.unbind(1)  # each (B,)
    scale_x = w / width
    if flip is not None:
        scale_x = torch.where(flip.to(x.device), -scale_x, scale_x)
    # The map is separable, so the grid is an outer sum (F.affine_grid's batched matmul is ~3x slower on CPU).
    grid_x = scale_x[:, None] * _pixel_centres(out_w, x.device) + ((2 * left + w) / width - 1)[:, None]
    grid_y = (h / height)[:, None] * _pixel_centres(out_h, x.device) + ((2 * top + h) / height - 1)[:, None]
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _pixel_centres(size: int, device: torch.device) -> Tensor:
    """(size,) normalised coordinates (2i + 1) / size − 1 of the pixel centres (align_corners=False)."""
    return (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1


def random_crop_flip(x: Tensor, generator: torch.Generator, crop_scale: tuple[float, float],
                     crop_ratio: tuple[float, float], flip_prob: float,
                     out_size: int | tuple[int, int] | None) -> Tensor:
    """Random resized crop then horizontal flip (p = flip_prob), both per image, on float images."""
    check_probability("flip probability", flip_prob)
    n, _, height, width = x.shape
    boxes = sample_crop_boxes(n, height, width, crop_scale, crop_ratio, generator, x.device)
    flip = torch.rand(n, generator=generator, device=x.device) < flip_prob
    return resized_crop(x, boxes, out_size or (height, width), flip=flip)


def crop_flip(images: Tensor, generator: torch.Generator, crop_scale: tuple[float, float] = (0.08, 1.0),
              flip_prob: float = 0.5, channels_last: bool = False, *,
              crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
              out_size: int | tuple[int, int] | None = None) -> Tensor:
    """Fine-tuning and distillation views (docs/recipe.md#classifier-views): random resized crop + flip only."""
    x = as_float_images(images)
    check_generator(generator, x.device)
    out = random_crop_flip(x, generator, crop_scale, crop_ratio, flip_prob, out_size)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def flip_crops(crops: Tensor, generator: torch.Generator, flip_prob: float = 0.5,
               channels_last: bool = False) -> Tensor:
    """:func:`crop_flip` for views already cropped at decode time with the boxes of ``draw_crop_randoms(B,
    generator)`` drawn from this step's generator state: those draws are made again here (and dropped), so the
    flips are those :func:`crop_flip` draws after its crops."""
    x = as_float_images(crops)
    check_generator(generator, x.device)
    check_probability("flip probability", flip_prob)
    draw_crop_randoms(x.shape[0], generator, x.device)  # the crop draws, already used by the loader
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < flip_prob
    out = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def center_crop(images: Tensor, fraction: float = 0.875, out_size: int | None = None) -> Tensor:
    """Evaluation view (docs/recipe.md#evaluation-view): the central ``fraction``, resized back; none at <= 32 px.

    Without ``out_size`` the crop is fraction·H × fraction·W, resized to H × W; with it, the crop is the
    central square of side fraction·min(H, W), resized to out_size². Either way the aspect ratio is kept.
    Resizing is bilinear with antialiasing (one box for the batch, so plain ``F.interpolate`` does it).
    Small float32 images that need neither crop nor resize come back as the input tensor itself.
    """
    if not 0.0 < fraction <= 1.0:
        raise SimCLRv2Error(f"center_crop fraction = {fraction!r} must be in (0, 1]")
    x = as_float_images(images)
    height, width = x.shape[-2:]
    size = (height, width) if out_size is None else pair(out_size, "out_size")
    if min(height, width) > SMALL_IMAGE:
        crop_h, crop_w = ((round(fraction * height), round(fraction * width)) if out_size is None
                          else (round(fraction * min(height, width)),) * 2)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        x = x[..., top:top + crop_h, left:left + crop_w]
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def eval_crop_fraction(image_size: int) -> float | None:
    """The centre crop of the evaluation view of images of side ``image_size``: 87.5 %, none at <= 32 px."""
    return EVAL_CROP if image_size > SMALL_IMAGE else None


def eval_view(images: Tensor, image_size: int) -> Tensor:
    """What a trained network sees at evaluation: square (B, C, S, S) images of side S = ``image_size`` ->
    float32 in [0, 1], the central :func:`eval_crop_fraction` of each resized back to S (the images themselves
    at <= 32 px). Evaluation and inference both call this, so they cannot disagree."""
    fraction = eval_crop_fraction(image_size)
    return as_float_images(images) if fraction is None else center_crop(images, fraction, out_size=image_size)
