"""Evaluation on the streaming path: linear, kNN and classifier scores of a streamed folder are the in-memory
scores (the decoded squares are the in-memory images and the centre crop follows on the device alike), shards
give the folder's validation scores, and a damaged image is refused as pretraining refuses it."""

from __future__ import annotations

import logging

import pytest

import streaming_helpers as helpers
from simclrv2.errors import SimCLRv2Error
from simclrv2.logs import get_logger
from simclrv2.stages.evaluate import evaluate
from simclrv2.stages.pretrain import pretrain
from simclrv2.stages.supervised import supervised

SIZE = 36  # above 32 px: the evaluation view centre-crops, as at full size

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return helpers.write_splits(tmp_path_factory.mktemp("stream-evaluate"), helpers.tall_images(48),
                                helpers.tall_images(12, seed=1))


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    """A pretrained encoder and a supervised classifier, trained in memory: what every evaluation here scores."""
    root = tmp_path_factory.mktemp("evaluated")
    pretrain(_config(folder, **{"data.stream": "memory"}), root / "pretrain")
    supervised(_config(folder, **{"data.stream": "memory"}), root / "supervised")
    return {"linear": root / "pretrain", "knn": root / "pretrain", "classifier": root / "supervised"}


def _config(folder, **overrides):
    return helpers.tiny_config(folder, SIZE, {
        "pretrain.batch_size": "8", "pretrain.epochs": "1", "finetune.labels": "6/class", "supervised.batch_size": "8",
        "supervised.epochs": "1", "supervised.min_steps": "0", "evaluate.labels": "5/class",
        "evaluate.linear_epochs": "20", "run.knn_k": "3", "run.eval_batch_size": "5", "augment.blur_min_side": "8",
        **overrides})


def _evaluate(folder, runs, mode, run_dir, **overrides):
    return evaluate(_config(folder, **{"evaluate.mode": mode, "evaluate.checkpoint": runs[mode], **overrides}),
                    run_dir)


@pytest.mark.parametrize("mode", ["linear", "knn", "classifier"])
def test_streamed_scores_are_the_in_memory_scores(folder, runs, tmp_path, caplog, mode):
    memory = _evaluate(folder, runs, mode, tmp_path / "memory", **{"data.stream": "memory"})
    with caplog.at_level(logging.INFO, logger=get_logger().name):
        streamed = _evaluate(folder, runs, mode, tmp_path / "stream", **{"data.stream": "stream"})
    assert any(m.startswith("data: streaming 48 images") for m in caplog.messages)
    assert sum(map(sum, streamed.val.confusion)) == 8 and sum(map(sum, streamed.test.confusion)) == 12
    assert (streamed.val.confusion, streamed.test.confusion) == (memory.val.confusion, memory.test.confusion)
    assert (streamed.val.top1, streamed.test.top1) == (memory.val.top1, memory.test.top1)
    assert streamed.details == memory.details


def test_shards_give_the_folders_validation_scores_and_no_test_scores(folder, runs, tmp_path):
    pytest.importorskip("webdataset")
    from simclrv2.data.streaming.shards import prepare_shards

    shards = prepare_shards(folder, tmp_path / "shards", shard_size=10)
    from_folder = _evaluate(folder, runs, "knn", tmp_path / "folder", **{"data.stream": "stream"})
    from_shards = _evaluate(shards, runs, "knn", tmp_path / "shards-run", **{"data.dataset": "webdataset"})
    assert from_shards.val.confusion == from_folder.val.confusion and from_shards.test is None


@pytest.mark.parametrize("mode", ["knn", "classifier"])
def test_a_damaged_image_is_refused_with_its_name(runs, tmp_path, mode):
    """Every image of one class is cut short, so validation (class-balanced) holds some whatever the draw."""
    root = helpers.write_splits(tmp_path / "bad", helpers.tall_images(48))
    for path in (root / "train" / "class0").iterdir():
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SimCLRv2Error, match=r"^cannot (read|decode) image \S*class0/img\d+\.png .*; remove or replace"):
        _evaluate(root, runs, mode, tmp_path / "run", **{"data.stream": "stream"})
