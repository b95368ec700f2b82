"""Specification of the batched SimCLR augmentation: distributions, invariants and naive references."""

from __future__ import annotations

import colorsys
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from simclrv2.augment import (
    JITTER_OPS,
    AugmentConfig,
    adjust_hue,
    blur_kernel_size,
    center_crop,
    crop_flip,
    eval_view,
    gaussian_blur,
    gaussian_kernels,
    jitter_ranges,
    resized_crop,
    sample_crop_boxes,
    sample_jitter,
    simclr_views,
    to_grayscale,
)
from simclrv2.augment.blur import random_blur_
from simclrv2.augment.color import BRIGHTNESS, CONTRAST, SATURATION, apply_jitter_, random_grayscale_
from simclrv2.errors import SimCLRv2Error

LUMA = torch.tensor([0.299, 0.587, 0.114])
NO_RANDOMNESS = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                              grayscale_prob=0.0, blur_prob=0.0, blur_min_side=1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, c: int = 3, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


def jitter(x: torch.Tensor, order: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The package's colour jitter (in place) on a copy."""
    return apply_jitter_(x.clone(), order, params)


def only(op: int, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jitter (order, params) giving image i the single colour op ``op`` with value ``values[i]``."""
    order = torch.full((len(values), 4), -1)
    order[:, 0] = op
    params = torch.zeros(len(values), 4)
    params[:, op] = values
    return order, params


def grey_level(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else (LUMA.view(1, 3, 1, 1) * x).sum(1, keepdim=True)


def naive_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp(0, 1)


def naive_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grey_level(x).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)


def naive_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return x if x.shape[1] == 1 else (f * x + (1 - f) * grey_level(x)).clamp(0, 1)


# --- crop boxes -------------------------------------------------------------------------------------------

def test_crop_boxes_stay_inside_the_image_with_area_and_aspect_within_bounds():
    boxes = sample_crop_boxes(4000, 200, 300, (0.08, 1.0), (3 / 4, 4 / 3), gen(), "cpu")
    top, left, h, w = boxes.unbind(1)
    assert boxes.shape == (4000, 4) and torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 200).all() and (left + w <= 300).all()
    area, aspect = h * w / (200 * 300), w / h
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= 4 / 3 * 1.03  # rounding to whole pixels
    assert aspect.min() < 0.8 and aspect.max() > 1.25 and area.min() < 0.1  # the whole range is used


def test_crop_boxes_fall_back_to_the_whole_image_when_no_attempt_fits():
    boxes = sample_crop_boxes(50, 32, 32, (0.9, 1.0), (10.0, 20.0), gen(), "cpu")
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(50, 4))


def test_crop_area_is_uniform_when_every_attempt_fits():
    boxes = sample_crop_boxes(20000, 100, 100, (0.2, 0.6), (1.0, 1.0), gen(), "cpu")
    area = boxes[:, 2] * boxes[:, 3] / 100**2
    assert abs(area.mean().item() - 0.4) < 0.01
    assert abs((area < 0.3).float().mean().item() - 0.25) < 0.02


def naive_crop_area(rng: random.Random, height: int, width: int, scale, ratio) -> float:
    """torchvision's loop with the reference's 100 attempts and whole-image fallback, one image at a time."""
    for _ in range(100):
        target = rng.uniform(*scale) * height * width
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return h * w / (height * width)
    return 1.0


def test_crop_area_distribution_matches_a_naive_per_image_loop():
    rng = random.Random(0)
    naive = torch.tensor([naive_crop_area(rng, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)])
    boxes = sample_crop_boxes(4000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), gen(), "cpu")
    ours = boxes[:, 2] * boxes[:, 3] / 32**2
    assert abs(ours.mean().item() - naive.mean().item()) < 0.03
    assert abs((ours > 0.9).float().mean().item() - (naive > 0.9).float().mean().item()) < 0.02


def test_crop_offsets_cover_every_position():
    boxes = sample_crop_boxes(2000, 20, 20, (0.25, 0.25), (1.0, 1.0), gen(), "cpu")  # always 10 x 10
    assert (boxes[:, 2:] == 10).all()
    assert set(boxes[:, 0].tolist()) == set(range(11)) and set(boxes[:, 1].tolist()) == set(range(11))


def test_crop_boxes_differ_between_images():
    boxes = sample_crop_boxes(64, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), gen(), "cpu")
    assert len({tuple(b) for b in boxes.tolist()}) > 60


# --- resized crop and flip --------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_resized_crop_of_the_whole_image_is_the_identity(channels):
    x = images(c=channels)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 24.0]]).expand(6, 4)
    torch.testing.assert_close(resized_crop(x, boxes, (20, 24)), x, atol=1e-5, rtol=0)


def test_resized_crop_at_the_box_size_is_the_slice():
    x, boxes = images(), torch.tensor([[2.0, 3.0, 8.0, 12.0], [0.0, 5.0, 8.0, 12.0], [12.0, 12.0, 8.0, 12.0]] * 2)
    out = resized_crop(x, boxes, (8, 12))
    for i, (top, left, _, _) in enumerate(boxes.int().tolist()):
        torch.testing.assert_close(out[i], x[i, :, top:top + 8, left:left + 12], atol=1e-5, rtol=0)


def test_resized_crop_matches_interpolating_the_slice():
    x = images(h=32, w=32)
    boxes = torch.tensor([[4.0, 6.0, 16.0, 8.0], [10.0, 0.0, 11.0, 20.0], [0.0, 0.0, 32.0, 32.0]] * 2)
    out = resized_crop(x, boxes, (32, 32))
    for i, (top, left, h, w) in enumerate(boxes.int().tolist()):
        naive = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(32, 32), mode="bilinear",
                              align_corners=False)[0]
        # Outer output pixels of an upscaled crop sample just outside the box, where interpolate repeats the
        # box edge and we read the neighbouring image pixel; two pixels of margin cover scales up to 4.
        torch.testing.assert_close(out[i, :, 2:-2, 2:-2], naive[:, 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_crops_of_a_constant_image_are_constant_even_at_the_image_border():
    x = torch.full((4, 3, 16, 16), 0.7)
    boxes = torch.tensor([[0.0, 0.0, 3.0, 4.0], [13.0, 12.0, 3.0, 4.0], [0.0, 10.0, 16.0, 6.0], [5.0, 5.0, 2.0, 2.0]])
    torch.testing.assert_close(resized_crop(x, boxes, (16, 16)), x)


def test_crop_flip_without_crop_flips_exactly_with_probability_one_and_never_with_zero():
    x = images()
    no_crop = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 24 / 20))
    torch.testing.assert_close(crop_flip(x, gen(), flip_prob=0.0, **no_crop), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(crop_flip(x, gen(), flip_prob=1.0, **no_crop), x.flip(-1), atol=1e-5, rtol=0)


def test_crop_flip_flips_about_half_of_the_images():
    x = images(b=400, c=1, h=4, w=5)
    out = crop_flip(x, gen(), crop_scale=(1.0, 1.0), flip_prob=0.5, crop_ratio=(1.25, 1.25))
    flipped = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    kept = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (flipped ^ kept).all() and 0.42 < flipped.float().mean().item() < 0.58


# --- colour operations against naive per-image formulas ---------------------------------------------------

def test_brightness_is_multiplicative_and_clipped():
    x, f = images(), torch.linspace(0.2, 1.8, 6)
    torch.testing.assert_close(jitter(x, *only(BRIGHTNESS, f)), (x * f.view(-1, 1, 1, 1)).clamp(0, 1))


@pytest.mark.parametrize("channels", [1, 3])
def test_contrast_blends_with_the_mean_grey_level_of_each_image(channels):
    x, f = images(c=channels), torch.linspace(0.0, 1.8, 6)
    for i, out in enumerate(jitter(x, *only(CONTRAST, f))):
        grey = x[i] if channels == 1 else (LUMA.view(3, 1, 1) * x[i]).sum(0)
        torch.testing.assert_close(out, (f[i] * x[i] + (1 - f[i]) * grey.mean()).clamp(0, 1))


def test_saturation_blends_each_pixel_with_its_grey_level():
    x, f = images(), torch.linspace(0.0, 1.8, 6)
    for i, out in enumerate(jitter(x, *only(SATURATION, f))):
        grey = (LUMA.view(3, 1, 1) * x[i]).sum(0, keepdim=True)
        torch.testing.assert_close(out, (f[i] * x[i] + (1 - f[i]) * grey).clamp(0, 1))


def test_hue_rotation_matches_colorsys_pixel_by_pixel():
    x, shift = images(b=4, h=3, w=3), torch.tensor([0.0, 0.1, -0.35, 0.5])
    x[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5])  # grey pixel: no hue
    x[1, :, 0, 0] = torch.tensor([0.9, 0.9, 0.2])  # two channels tie for the max
    out = adjust_hue(x, shift)
    for i, row, col in itertools.product(range(4), range(3), range(3)):
        h, s, v = colorsys.rgb_to_hsv(*x[i, :, row, col].tolist())
        expected = colorsys.hsv_to_rgb((h + shift[i].item()) % 1.0, s, v)
        torch.testing.assert_close(out[i, :, row, col], torch.tensor(expected), atol=1e-5, rtol=0)


def test_neutral_hue_and_saturation_change_nothing():
    x = images()
    torch.testing.assert_close(adjust_hue(x, torch.zeros(6)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(jitter(x, *only(SATURATION, torch.ones(6))), x, atol=1e-6, rtol=0)


def test_grey_images_are_untouched_by_saturation_hue_and_grayscale():
    x = images(c=1)
    assert torch.equal(jitter(x, *only(SATURATION, torch.full((6,), 1.7))), x)
    assert torch.equal(adjust_hue(x, torch.full((6,), 0.3)), x)
    assert torch.equal(to_grayscale(x), x) and torch.equal(random_grayscale_(x.clone(), 1.0, gen()), x)


def test_grayscale_uses_itu_601_luma_and_keeps_three_channels():
    x = images()
    grey = to_grayscale(x)
    expected = (LUMA.view(1, 3, 1, 1) * x).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    torch.testing.assert_close(grey, expected)
    assert torch.equal(random_grayscale_(x.clone(), 0.0, gen()), x)
    y = x.clone()
    assert random_grayscale_(y, 1.0, gen()) is y  # in place: the pipeline owns its batch
    torch.testing.assert_close(y, expected)


# --- colour jitter: ranges, random order, fused path against a naive loop ---------------------------------

def test_jitter_parameters_stay_in_the_spec_ranges():
    order, params = sample_jitter(5000, 0.5, 1.0, gen())
    low, high = jitter_ranges(0.5)
    torch.testing.assert_close(low, torch.tensor([0.6, 0.6, 0.6, -0.1]))
    torch.testing.assert_close(high, torch.tensor([1.4, 1.4, 1.4, 0.1]))
    assert (params >= low).all() and (params <= high).all()
    assert (params.amin(0) < low + 0.01).all() and (params.amax(0) > high - 0.01).all()
    assert jitter_ranges(2.0)[0][0].item() == 0.0  # brightness floored at 0


def test_every_order_of_the_four_jitter_ops_occurs():
    order, _ = sample_jitter(5000, 0.5, 1.0, gen())
    counts = {}
    for row in order.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(4)))
    assert min(counts.values()) > 5000 / 24 * 0.7


def test_jitter_is_applied_with_probability_p_per_image():
    order, _ = sample_jitter(5000, 0.5, 0.8, gen())
    skipped = (order == -1).all(dim=1)
    assert ((order >= 0).all(dim=1) | skipped).all()
    assert abs(skipped.float().mean().item() - 0.2) < 0.02
    x = images()
    assert torch.equal(jitter(x, *sample_jitter(len(x), 0.5, 0.0, gen())), x)


def test_jitter_order_matters():
    x = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2)  # mean 0.5
    params = torch.tensor([[1.5, 0.5, 1.0, 0.0]])  # brightness 1.5, contrast 0.5
    bright_first = jitter(x, torch.tensor([[0, 1, 2, 3]]), params)  # 0.3, 1.0 (clipped) -> mean 0.65
    contrast_first = jitter(x, torch.tensor([[1, 0, 2, 3]]), params)  # 0.35, 0.65 -> x 1.5
    torch.testing.assert_close(bright_first.flatten(), torch.tensor([0.475, 0.825]))
    torch.testing.assert_close(contrast_first.flatten(), torch.tensor([0.525, 0.975]))


@pytest.mark.parametrize("channels", [1, 3])
def test_fused_jitter_matches_applying_each_op_image_by_image(channels):
    x = images(b=40, c=channels, h=6, w=7)
    order, params = sample_jitter(40, 1.0, 0.8, gen(1))
    ops = (naive_brightness, naive_contrast, naive_saturation, adjust_hue)
    out = jitter(x, order, params)
    for i in range(40):
        naive = x[i:i + 1]
        for op in order[i].tolist():
            if op >= 0:
                naive = ops[op](naive, params[i:i + 1, op])
        torch.testing.assert_close(out[i:i + 1], naive, atol=1e-5, rtol=0)
    assert JITTER_OPS == ("brightness", "contrast", "saturation", "hue")


# --- blur -------------------------------------------------------------------------------------------------

def test_blur_kernel_is_odd_normalised_and_about_a_tenth_of_the_side():
    assert [blur_kernel_size(s) for s in (8, 32, 33, 96, 224)] == [3, 3, 3, 9, 23]
    kernels = gaussian_kernels(torch.tensor([0.1, 1.0, 2.0]), 9)
    torch.testing.assert_close(kernels.sum(1), torch.ones(3))
    t = torch.arange(-4.0, 5.0)
    torch.testing.assert_close(kernels[2], torch.exp(-(t**2) / 8) / torch.exp(-(t**2) / 8).sum())
    with pytest.raises(SimCLRv2Error):
        gaussian_kernels(torch.tensor([1.0]), 4)


def test_blur_with_tiny_sigma_is_nearly_the_identity():
    x = images(h=40, w=40)
    torch.testing.assert_close(gaussian_blur(x, torch.full((6,), 0.1)), x, atol=1e-6, rtol=0)


def test_blur_matches_a_naive_per_image_convolution():
    x, sigma = images(h=50, w=45), torch.linspace(0.1, 2.0, 6)
    out = gaussian_blur(x, sigma)
    size = blur_kernel_size(45)
    for i in range(6):
        k1 = gaussian_kernels(sigma[i:i + 1], size)[0]
        kernel = torch.outer(k1, k1).expand(3, 1, size, size)
        padded = F.pad(x[i:i + 1], (size // 2,) * 4, mode="reflect")
        torch.testing.assert_close(out[i:i + 1], F.conv2d(padded, kernel, groups=3), atol=1e-5, rtol=0)


def test_blur_is_never_applied_to_images_of_32_pixels_or_less():
    config = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                           grayscale_prob=0.0, blur_prob=1.0)
    small, large = images(h=32, w=32), images(h=33, w=33)
    torch.testing.assert_close(simclr_views(small, config, gen())[0], small, atol=1e-5, rtol=0)
    assert (simclr_views(large, config, gen())[0] - large).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert torch.equal(random_blur_(large.clone(), 0.0, (0.1, 2.0), 33, gen()), large)


# --- the pipeline -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_no_randomness_gives_the_identity(channels):
    x = torch.randint(0, 256, (5, channels, 40, 36), dtype=torch.uint8, generator=gen())
    view1, view2 = simclr_views(x, NO_RANDOMNESS, gen())
    torch.testing.assert_close(view1, x.float() / 255, atol=1e-5, rtol=0)
    torch.testing.assert_close(view2, x.float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (16, 3, 32, 32), (4, 3, 64, 48)])
def test_views_are_float32_in_the_unit_range_and_keep_the_size(shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen())
    config = AugmentConfig(jitter_strength=1.0)
    for view in simclr_views(x, config, gen()):
        assert view.shape == shape and view.dtype == torch.float32
        assert view.min() >= 0 and view.max() <= 1
    assert simclr_views(x, config, gen(), out_size=24)[0].shape == shape[:2] + (24, 24)


def test_uint8_input_equals_float_input_divided_by_255():
    x = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8, generator=gen())
    from_uint8 = simclr_views(x, AugmentConfig(), gen(3))
    from_float = simclr_views(x.float() / 255, AugmentConfig(), gen(3))
    assert torch.equal(from_uint8[0], from_float[0]) and torch.equal(from_uint8[1], from_float[1])


def test_views_are_reproducible_and_depend_on_the_seed():
    x = images(b=8)
    first, again, other = (simclr_views(x, AugmentConfig(), gen(seed)) for seed in (7, 7, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])


def test_identical_images_get_different_views():
    x = images(b=1).expand(8, -1, -1, -1)
    view, _ = simclr_views(x, AugmentConfig(), gen())
    differences = (view[:, None] - view[None]).abs().amax(dim=(2, 3, 4))  # (8, 8)
    assert (differences + torch.eye(8) > 1e-3).all()


def test_grayscale_and_blur_are_drawn_with_their_probabilities():
    x = images(b=1000, h=33, w=33)
    grey = random_grayscale_(x.clone(), 0.2, gen())
    blurred = random_blur_(x.clone(), 0.5, (1.0, 2.0), 33, gen())
    is_grey = (grey[:, 0] == grey[:, 1]).all(dim=(1, 2))
    is_blurred = (blurred != x).any(dim=(1, 2, 3))
    assert abs(is_grey.float().mean().item() - 0.2) < 0.04 and abs(is_blurred.float().mean().item() - 0.5) < 0.05


def test_the_callers_images_are_never_modified():
    x = images(b=4, h=40, w=40)
    before = x.clone()
    simclr_views(x, AugmentConfig(blur_prob=1.0, jitter_prob=1.0, grayscale_prob=1.0), gen())
    crop_flip(x, gen())
    assert torch.equal(x, before)


def test_channels_last_flag_gives_channels_last_outputs():
    x = images(b=4)
    for out in (*simclr_views(x, AugmentConfig(), gen(), channels_last=True),
                crop_flip(x, gen(), channels_last=True)):
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


# --- evaluation crop --------------------------------------------------------------------------------------

def test_center_crop_is_only_a_conversion_for_small_images():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=gen())
    assert torch.equal(center_crop(x), x.float() / 255)


def test_center_crop_keeps_the_central_seven_eighths_and_resizes_back():
    x = images(b=2, h=64, w=64)
    naive = F.interpolate(x[..., 4:60, 4:60], size=(64, 64), mode="bilinear", align_corners=False,
                          antialias=True)
    torch.testing.assert_close(center_crop(x, 0.875), naive.clamp(0, 1))
    assert center_crop(images(b=2, h=64, w=96), out_size=48).shape == (2, 3, 48, 48)


def test_eval_view_crops_above_32_px_only():
    small = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen())
    assert torch.equal(eval_view(small, 32), small.float() / 255)
    large = images(b=2, h=40, w=40)
    torch.testing.assert_close(eval_view(large, 40), center_crop(large, 0.875, out_size=40))
    assert not torch.allclose(eval_view(large, 40), large)


# --- validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(crop_scale=(0.5, 0.2)), dict(crop_scale=(0.0, 1.0)),
                                 dict(crop_ratio=(0.0, 1.0)), dict(flip_prob=1.5), dict(jitter_prob=-0.1),
                                 dict(jitter_strength=-1.0), dict(blur_sigma=(0.0, 2.0)),
                                 dict(blur_min_side=0)])
def test_config_rejects_bad_ranges(bad):
    with pytest.raises(SimCLRv2Error):
        AugmentConfig(**bad)


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(2, 2, 8, 8), torch.rand(2, 8, 8, 3),
                                 torch.zeros(2, 1, 8, 8, dtype=torch.int32), [[0.5]]])
def test_bad_images_raise_a_clear_error(bad):
    with pytest.raises(SimCLRv2Error):
        simclr_views(bad, AugmentConfig(), gen())


def test_a_missing_generator_raises_a_clear_error():
    with pytest.raises(SimCLRv2Error, match="Generator"):
        simclr_views(images(), AugmentConfig(), None)


def test_pad_crop_flip_matches_a_per_image_loop():
    """Against a naive reference: pad with zeros, take the window at the drawn offset, flip if drawn."""
    from simclrv2.augment import pad_crop_flip

    images = torch.randint(0, 256, (6, 3, 9, 9), dtype=torch.uint8)
    out = pad_crop_flip(images, torch.Generator().manual_seed(5), padding=3, flip_prob=0.5)
    g = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 7, (6, 2), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(images.float() / 255, (3, 3, 3, 3))
    for i in range(6):
        y, x = offsets[i].tolist()
        window = padded[i, :, y:y + 9, x:x + 9]
        expected = window.flip(2) if flips[i] else window
        torch.testing.assert_close(out[i], expected)


def test_pad_crop_flip_without_padding_or_flips_is_the_identity():
    from simclrv2.augment import pad_crop_flip

    images = torch.randint(0, 256, (4, 1, 7, 7), dtype=torch.uint8)
    out = pad_crop_flip(images, torch.Generator().manual_seed(0), padding=0, flip_prob=0.0)
    torch.testing.assert_close(out, images.float() / 255)
