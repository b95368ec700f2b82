"""The augmentation's geometry: crop boxes (area, aspect, fallback, distribution against a naive loop), resized
crops, flips, the evaluation crop and the pad-crop-flip of small images."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from simclrv2.augment import center_crop, crop_flip, eval_view, resized_crop, sample_crop_boxes


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, c: int = 3, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


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
