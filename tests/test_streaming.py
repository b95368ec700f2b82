"""The streaming path: file index and its cache, decode-time crops equal to the in-memory crops, the step
sampler, shards, and the choice between memory and streaming."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import simclrv2.data.streaming.index as index_module
from simclrv2.augment import (
    AugmentConfig,
    crop_boxes_from_randoms,
    draw_crop_randoms,
    resized_crop,
    sample_crop_boxes,
    simclr_views,
    simclr_views_from_crops,
)
from simclrv2.config import load_config
from simclrv2.data.folder import read_folder
from simclrv2.data.streaming import BatchSource, CropDataset, StepSampler, choose_stream, folder_index
from simclrv2.data.streaming.shards import prepare_shards, shard_index
from simclrv2.errors import SimCLRv2Error
from streaming_helpers import identity_images, image_ids, smooth_images, write_folder

SIZE = 16
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images") / "train", smooth_images(24, SIZE), classes=3)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_boxes_from_separate_randoms_are_sample_crop_boxes_and_leave_the_generator_alike():
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    boxes = sample_crop_boxes(32, 17, 23, SCALE, RATIO, a)
    assert torch.equal(crop_boxes_from_randoms(draw_crop_randoms(32, b), 17, 23, SCALE, RATIO), boxes)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_file_index_lists_the_in_memory_readers_images_in_its_order(folder):
    index = folder_index(folder.parent)
    memory = read_folder(folder.parent, "train", SIZE)
    assert [index.relative(i) for i in range(len(index))] == list(memory.ids)
    assert np.array_equal(index.labels, memory.labels.numpy()) and index.classes == memory.classes


def test_file_index_is_cached_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "flat", smooth_images(5, 8))
    builds = []
    real = index_module._build
    monkeypatch.setattr(index_module, "_build", lambda f: builds.append(f) or real(f))
    assert len(folder_index(root)) == 5 and folder_index(root).labels is None
    assert len(builds) == 1  # the second call read the cache
    write_folder(tmp_path / "more", smooth_images(1, 8))
    (tmp_path / "more" / "img0000.png").rename(root / "zz-new.png")
    assert len(folder_index(root)) == 6 and len(builds) == 2


def test_bad_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimCLRv2Error, match="is empty"):
        folder_index(tmp_path / "empty")
    root = write_folder(tmp_path / "mixed", smooth_images(2, 8), classes=1)
    write_folder(root, smooth_images(1, 8))
    with pytest.raises(SimCLRv2Error, match="lies beside the class folders"):
        folder_index(root)


def _crops(source, randoms: torch.Tensor, batch: int) -> torch.Tensor:
    """The (2B, C, S, S) crops the workers return for items 0 … B−1, in the engine's view order."""
    dataset = CropDataset(source, SIZE, 3, SCALE, RATIO)
    pairs = torch.stack([dataset[(k, randoms[[k, k + batch]])] for k in range(batch)])
    return pairs.transpose(0, 1).reshape(-1, 3, SIZE, SIZE)


def test_decode_time_crops_are_the_in_memory_crops_for_the_same_seed(folder):
    images = read_folder(folder.parent, "train", SIZE).images[:8]
    randoms = draw_crop_randoms(16, torch.Generator().manual_seed(1))
    streamed = _crops(folder_index(folder.parent), randoms, 8).float()
    boxes = sample_crop_boxes(16, SIZE, SIZE, SCALE, RATIO, torch.Generator().manual_seed(1))
    in_memory = resized_crop(torch.cat([images, images]), boxes, SIZE) * 255
    difference = (streamed - in_memory).abs()
    # the same boxes, resampled by PIL instead of grid_sample: a few grey levels apart, never a shifted box
    assert difference.mean() < 2.0 and difference.amax() < 24
    shuffled = in_memory[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    assert (streamed - shuffled).abs().mean() > 10 * difference.mean()  # the check can fail


def test_views_from_crops_draw_what_simclr_views_draws_after_its_crops(folder):
    """Given the crops in-memory cutting makes, the streamed pipeline gives the same views: flip, jitter, grey
    and blur start from the same generator state."""
    config = AugmentConfig(blur_min_side=8)
    images = read_folder(folder.parent, "train", SIZE).images[:8]
    expected = simclr_views(images, config, torch.Generator().manual_seed(3))
    boxes = sample_crop_boxes(16, SIZE, SIZE, SCALE, RATIO, torch.Generator().manual_seed(3))
    crops = resized_crop(torch.cat([images, images]), boxes, SIZE)
    got = simclr_views_from_crops(crops, config, torch.Generator().manual_seed(3))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_step_sampler_replays_the_engines_steps_from_the_resume_point():
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    plan = lambda step, n: torch.full((2 * n, 202), float(step))  # noqa: E731
    sampler = StepSampler(4, 5, plan)
    sampler.start(2, order, 3)
    steps = list(sampler)
    assert len(steps) == len(sampler) == 2
    assert [[i for i, _ in s] for s in steps] == [order[12:16].tolist(), order[16:20].tolist()]
    assert steps[0][0][1].shape == (2, 202) and float(steps[1][0][1][0, 0]) == 2 * 5 + 4  # global step 14


def test_batch_source_with_a_worker_yields_the_steps_images_and_names_a_bad_file(tmp_path):
    root = write_folder(tmp_path / "ids", identity_images(12, 8))
    source = BatchSource(CropDataset(folder_index(root), 8, 3, SCALE, RATIO), 3, 4,
                         lambda step, n: draw_crop_randoms(2 * n, torch.Generator().manual_seed(step)), 1,
                         torch.device("cpu"))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    batches = list(source(0, order, 1))
    assert [image_ids(b[:3]) for b in batches] == [order[3 * i:3 * i + 3].tolist() for i in (1, 2, 3)]
    assert all(image_ids(b[3:]) == image_ids(b[:3]) for b in batches)  # second views: the same images
    (root / "img0005.png").write_bytes(b"not a png")
    with pytest.raises(SimCLRv2Error, match=r"img0005\.png") as caught:
        list(source(0, torch.tensor([5] * 12), 0))
    assert "\n" not in str(caught.value)


def test_shards_round_trip_the_folder(folder, tmp_path):
    pytest.importorskip("webdataset")
    out = prepare_shards(folder.parent, tmp_path / "shards", shard_size=10)
    assert len(list(out.glob("*.tar"))) == 3
    shards, files = shard_index(out), folder_index(folder.parent)
    assert len(shards) == len(files) and shards.classes == files.classes
    assert np.array_equal(shards.labels, files.labels)
    randoms = draw_crop_randoms(16, torch.Generator().manual_seed(2))
    assert torch.equal(_crops(shards, randoms, 8), _crops(files, randoms, 8))
    with pytest.raises(SimCLRv2Error, match="already holds shards"):
        prepare_shards(folder.parent, out)


@pytest.mark.parametrize("inside", [".", "shards", "a/b"])
def test_prepare_refuses_an_output_inside_the_image_folder_and_writes_nothing(folder, inside, capsys):
    from simclrv2.cli import main

    source = folder.parent
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    out = source / inside
    assert main(["prepare", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert "inside the image folder" in err and err.count("\n") == 1
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before


def test_prepare_to_a_folder_that_cannot_be_created_is_one_line(folder, tmp_path, capsys):
    pytest.importorskip("webdataset")
    from simclrv2.cli import main

    (tmp_path / "file").write_text("")
    assert main(["prepare", str(folder.parent), str(tmp_path / "file" / "shards")]) == 2
    err = capsys.readouterr().err
    assert "cannot create" in err and err.count("\n") == 1


def test_auto_streams_above_the_threshold_and_says_why(folder, caplog):
    values = {"data.dataset": "folder", "data.data_dir": str(folder.parent)}
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        assert choose_stream(load_config(None, values).data) is None
        stream = choose_stream(load_config(None, {**values, "data.stream_above": "10"}).data)
    assert stream is not None and len(stream) == 24
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data:")]
    assert "in memory" in lines[0] and "24 images > data.stream_above = 10" in lines[1]
    with pytest.raises(SimCLRv2Error, match="data.stream = 'stream' reads image folders"):
        choose_stream(load_config(None, {"data.stream": "stream"}).data)


def test_prepare_command_writes_shards_a_run_can_stream(folder, tmp_path, capsys):
    pytest.importorskip("webdataset")
    from simclrv2.cli import main

    assert main(["prepare", str(folder.parent), str(tmp_path / "shards"), "--shard-size", "16"]) == 0
    assert "data.dataset = 'webdataset'" in capsys.readouterr().out
    values = {"data.dataset": "webdataset", "data.data_dir": str(tmp_path / "shards")}
    assert len(choose_stream(load_config(None, values).data)) == 24
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_streamed_folder_size_and_channels_come_from_a_sample_of_headers_unless_set(tmp_path, caplog):
    from PIL import Image

    for i in range(12):
        folder = tmp_path / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (24, 20) if i < 9 else (40, 40), color=i * 10).save(folder / f"img{i:02d}.png")
    values = {"data.dataset": "folder", "data.data_dir": str(tmp_path), "data.stream": "stream"}
    with caplog.at_level(logging.INFO, logger="simclrv2"):
        stream = choose_stream(load_config(None, values).data)
    assert (stream.image_size, stream.channels) == (20, 1)  # the most common shorter side; every image grey
    assert "from 12 sampled images: 75% of the images are 20 px" in caplog.records[-1].getMessage()
    chosen = choose_stream(load_config(None, {**values, "data.image_size": "32", "data.channels": "3"}).data)
    assert (chosen.image_size, chosen.channels) == (32, 3)
