"""Specification of the batched SimCLR augmentation pipeline: the views it makes, their dtype, layout and
reproducibility, the probabilities it draws with, and its errors (tests/test_augment_geometry.py and
tests/test_augment_color.py specify the operations)."""

from __future__ import annotations

import pytest
import torch

from simclrv2.augment import AugmentConfig, crop_flip, simclr_views
from simclrv2.augment.blur import random_blur_
from simclrv2.augment.color import random_grayscale_
from simclrv2.errors import SimCLRv2Error

NO_RANDOMNESS = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                              grayscale_prob=0.0, blur_prob=0.0, blur_min_side=1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, c: int = 3, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


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
