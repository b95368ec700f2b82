"""The augmentation's colour and blur: each colour operation against its naive per-image formula, the jitter's
ranges, random order and fused path, grayscale, and the Gaussian blur against a naive convolution."""

from __future__ import annotations

import colorsys
import itertools

import pytest
import torch
import torch.nn.functional as F

from simclrv2.augment import (
    JITTER_OPS,
    AugmentConfig,
    adjust_hue,
    blur_kernel_size,
    gaussian_blur,
    gaussian_kernels,
    jitter_ranges,
    sample_jitter,
    simclr_views,
    to_grayscale,
)
from simclrv2.augment.blur import random_blur_
from simclrv2.augment.color import BRIGHTNESS, CONTRAST, SATURATION, apply_jitter_, random_grayscale_
from simclrv2.errors import SimCLRv2Error

LUMA = torch.tensor([0.299, 0.587, 0.114])


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
