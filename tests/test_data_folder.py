"""Image folders: 16-bit grey, the size and channels chosen from the data, and the one summary line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from simclrv2.config import load_config
from simclrv2.data import load_dataset
from simclrv2.data.folder import MAX_AUTO_SIZE, Probe, choose_format
from simclrv2.errors import SimCLRv2Error


def save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def grey(side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def colour(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("simclrv2")]


def test_16_bit_grey_png_keeps_its_high_byte(tmp_path):
    values = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257  # 0 .. 65535 in equal steps
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")  # really a 16-bit file
    ds = load_dataset("folder", data_dir=tmp_path, image_size=16, channels=1)
    assert ds.images[0, 0].numpy().tolist() == (values >> 8).astype(np.uint8).tolist()


def test_16_bit_mid_grey_is_mid_grey_in_rgb_too(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "mid.png")
    ds = load_dataset("folder", data_dir=tmp_path, image_size=8, channels=3)
    assert ds.images.unique().tolist() == [128]  # Pillow's own convert("L") gives 255 here


def test_small_grey_folder_keeps_its_size_and_one_channel(tmp_path, caplog):
    for i in range(3):
        save(tmp_path / "digit" / f"{i}.png", grey(28, i))
    save(tmp_path / "digit" / "odd.png", grey(40, 9))
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        ds = load_dataset("folder", data_dir=tmp_path)
    assert (ds.channels, ds.image_size) == (1, 28)
    assert ds.images[0, 0].numpy().tolist() == grey(28, 0).tolist()  # not resampled at all
    chosen = [m for m in records(caplog) if "reading images at" in m]
    assert len(chosen) == 1
    assert "28 px, 1 channel" in chosen[0] and "every image is grey" in chosen[0]
    assert "data.image_size" in chosen[0] and "data.channels" in chosen[0]


def test_one_colour_image_makes_the_folder_rgb(tmp_path):
    save(tmp_path / "a.png", grey(12, 0))
    save(tmp_path / "b.png", colour(12, 12, 1))
    assert load_dataset("folder", data_dir=tmp_path).channels == 3


def test_large_images_are_capped(tmp_path):
    save(tmp_path / "a.png", colour(200, 300, 0))
    assert load_dataset("folder", data_dir=tmp_path).image_size == MAX_AUTO_SIZE


def test_choice_takes_the_most_common_shorter_side_and_the_larger_on_a_tie():
    probes = [Probe(30, 20, "L"), Probe(20, 20, "L"), Probe(64, 64, "RGB")]
    assert choose_format(probes)[:2] == (20, 3)
    assert choose_format([Probe(8, 8, "L"), Probe(16, 16, "I;16")])[:2] == (16, 1)
    assert choose_format(probes, image_size=10, channels=1) == (10, 1, "")


def test_test_split_follows_the_training_images(tmp_path):
    save(tmp_path / "train" / "cat" / "0.png", grey(28, 0))
    save(tmp_path / "test" / "cat" / "0.png", colour(40, 40, 1))
    test = load_dataset("folder", "test", data_dir=tmp_path)
    assert (test.channels, test.image_size) == (1, 28)


def test_given_size_and_channels_are_used_without_a_choice_line(tmp_path, caplog):
    save(tmp_path / "a.png", grey(28, 0))
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        ds = load_dataset("folder", data_dir=tmp_path, image_size=32, channels=3)
    assert (ds.channels, ds.image_size) == (3, 32)
    assert not [m for m in records(caplog) if "reading images at" in m]


def test_one_summary_line_counts_skipped_converted_and_resized(tmp_path, caplog):
    save(tmp_path / "cat" / "a.png", colour(16, 16, 0))
    save(tmp_path / "cat" / "b.png", colour(16, 16, 1))
    save(tmp_path / "cat" / "wide.png", colour(16, 24, 2))  # cropped, not resized
    save(tmp_path / "cat" / "big.png", colour(32, 32, 3))  # resized
    save(tmp_path / "dog" / "grey.png", grey(16, 5))
    Image.fromarray(colour(16, 16, 4)).convert("RGBA").save(tmp_path / "dog" / "alpha.png")
    (tmp_path / "dog" / "labels.csv").write_text("a,b\n")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        ds = load_dataset("folder", data_dir=tmp_path, image_size=16, channels=3)
    assert len(ds) == 6 and "dog/broken.png" not in ds.ids
    lines = records(caplog)
    assert len(lines) == 1
    line = lines[0]
    assert "read 6 images" in line
    assert "skipped 1 non-image file (dog/labels.csv)" in line
    assert "skipped 1 unreadable image (dog/broken.png" in line
    assert "converted 2 to RGB (from 1 L, 1 RGBA)" in line
    assert "resized 1 whose shorter side was not 16 px" in line and "centre-cropped 1 non-square" in line
    assert caplog.records[0].levelno == logging.WARNING


def test_clean_folder_logs_no_summary(tmp_path, caplog):
    save(tmp_path / "a.png", colour(16, 16, 0))
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        load_dataset("folder", data_dir=tmp_path, image_size=16, channels=3)
    assert records(caplog) == []


def test_image_truncated_after_its_header_is_skipped(tmp_path, caplog):
    save(tmp_path / "good.png", colour(16, 16, 0))
    save(tmp_path / "cut.png", colour(64, 64, 1))
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # the header still parses
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        ds = load_dataset("folder", data_dir=tmp_path, image_size=16, channels=3)
    assert ds.ids == ("good.png",)
    assert "skipped 1 unreadable image (cut.png" in " ".join(records(caplog))


def test_folder_with_nothing_readable_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.jpg").write_bytes(b"nor a jpeg")
    with pytest.raises(SimCLRv2Error, match=r"none of the 2 image files in .* can be read \(e\.g\. a\.png, b\.jpg"):
        load_dataset("folder", data_dir=tmp_path)


def test_class_whose_every_image_is_unreadable_is_refused(tmp_path):
    save(tmp_path / "cat" / "0.png", colour(8, 8, 0))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "0.png").write_bytes(b"not a png")
    with pytest.raises(SimCLRv2Error, match=r"no image of class folder .*dog can be read \(e\.g\. dog/0\.png"):
        load_dataset("folder", data_dir=tmp_path)


def test_data_channels_option_is_validated():
    assert load_config(None, {"data.channels": "1"}).data.channels == 1
    with pytest.raises(SimCLRv2Error, match=r"data.channels must be 1 \(grey\), 3 \(RGB\) or 0"):
        load_config(None, {"data.channels": "2"})
