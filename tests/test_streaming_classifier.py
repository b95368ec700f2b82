"""Fine-tuning and the supervised baseline on the streaming path: the in-memory batches for the same seed (exactly
for the pad-4 crop, whose decoded squares are the in-memory images; up to resampling for the random resized crop
cut at decode time), exact resume after a signal mid-epoch, and a damaged image refused as pretraining does."""

from __future__ import annotations

import pytest
import torch

import streaming_helpers as helpers
from simclrv2.errors import SimCLRv2Error
from simclrv2.results import StageResult
from simclrv2.stages.finetune import finetune
from simclrv2.stages.pretrain import pretrain
from simclrv2.stages.supervised import supervised

SIZE = 16  # <= 32 px: "auto" is the pad-4 crop

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return helpers.write_splits(tmp_path_factory.mktemp("stream-classify"), helpers.smooth_images(48, SIZE),
                                helpers.smooth_images(8, SIZE, seed=1))


def _config(folder, **overrides):
    return helpers.tiny_config(folder, SIZE, {
        "finetune.labels": "6/class", "supervised.batch_size": "8", "supervised.epochs": "2",
        "supervised.min_steps": "0", "finetune.batch_size": "8", "finetune.epochs": "2", "finetune.min_steps": "0",
        "pretrain.batch_size": "8", "pretrain.epochs": "1", "run.log_every": "1", "augment.blur_min_side": "8",
        **overrides})


def test_streamed_supervised_with_the_pad_crop_is_the_in_memory_run(folder, tmp_path):
    """The decoded squares are the in-memory images and the pad-4 crop is drawn on the device alike: the same
    losses, weights and scores (the subset file too)."""
    memory = supervised(_config(folder, **{"data.stream": "memory"}), tmp_path / "memory")
    streamed = supervised(_config(folder, **{"data.stream": "stream"}), tmp_path / "stream")
    assert len(helpers.losses(tmp_path / "stream")) == 6  # 24 labels, batch 8, 2 epochs
    assert helpers.losses(tmp_path / "stream") == pytest.approx(helpers.losses(tmp_path / "memory"), abs=1e-6)
    a, b = helpers.final_weights(tmp_path / "memory"), helpers.final_weights(tmp_path / "stream")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert streamed.val.top1 == memory.val.top1 and streamed.test.top1 == memory.test.top1
    subset = "labelled_subset.txt"
    lines = [(tmp_path / run / subset).read_text().splitlines()[-24:] for run in ("memory", "stream")]
    assert lines[0] == lines[1]


def test_streamed_random_resized_crops_are_the_in_memory_views_for_the_same_seed(folder, tmp_path, monkeypatch):
    """The crops cut at decode time are the in-memory boxes, flipped alike, but for PIL's resampling of the
    same boxes; another seed draws other views."""
    resized = {"supervised.crop": "resized"}
    memory = helpers.classifier_views(supervised, _config(folder, **{"data.stream": "memory", **resized}),
                                      tmp_path / "memory", monkeypatch)
    streamed = helpers.classifier_views(supervised, _config(folder, **{"data.stream": "stream", **resized}),
                                        tmp_path / "stream", monkeypatch)
    other = helpers.classifier_views(supervised, _config(folder, **{"data.stream": "stream", "run.seed": 1, **resized}),
                                     tmp_path / "other", monkeypatch)
    assert memory.shape == streamed.shape == (6, 8, 3, SIZE, SIZE)
    assert (streamed - memory).abs().mean() < 0.02
    assert (other - memory).abs().mean() > 5 * (streamed - memory).abs().mean()


@pytest.mark.slow
def test_streamed_finetuning_is_the_in_memory_finetuning(folder, tmp_path):
    pretrain(_config(folder, **{"data.stream": "stream"}), tmp_path / "pretrained")
    tuned = {"finetune.pretrained": str(tmp_path / "pretrained")}
    memory = finetune(_config(folder, **{"data.stream": "memory", **tuned}), tmp_path / "memory")
    streamed = finetune(_config(folder, **{"data.stream": "stream", **tuned}), tmp_path / "stream")
    assert helpers.losses(tmp_path / "stream") == pytest.approx(helpers.losses(tmp_path / "memory"), abs=1e-6)
    assert streamed.val.top1 == memory.val.top1 and isinstance(streamed, StageResult)


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_a_signal_mid_epoch_and_resume_are_exact_when_streamed(folder, tmp_path, monkeypatch, crop):
    config = _config(folder, **{"data.stream": "stream", "supervised.crop": crop})
    # step 2 is mid-epoch: 3 steps an epoch
    helpers.assert_resume_after_a_signal_at_step_2_is_exact(supervised, config, crop, tmp_path, monkeypatch)


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_a_damaged_training_image_is_refused_with_its_name(tmp_path, crop):
    root = helpers.write_folder(tmp_path / "bad", helpers.smooth_images(48, SIZE), classes=4)
    path = root / "class0" / "img0000.png"
    path.write_bytes(path.read_bytes()[:100])
    config = _config(root, **{"data.stream": "stream", "supervised.crop": crop, "finetune.labels": "10/class"})
    with pytest.raises(SimCLRv2Error, match=r"^cannot (read|decode) image \S*img0000\.png .*; remove or replace"):
        supervised(config, tmp_path / "run")
