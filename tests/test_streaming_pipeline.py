"""``simclrv2 pipeline`` end to end on a streamed folder and on WebDataset shards: every stage reads through the
streaming path (each says so in its data line), the pipeline's own embeddings too, and the table is written."""

from __future__ import annotations

import logging

import pytest

import streaming_helpers as helpers
from simclrv2.errors import SimCLRv2Error
from simclrv2.logs import get_logger
from simclrv2.results import PipelineSummary
from simclrv2.stages.pipeline import pipeline

SIZE = 16
STAGES = 6  # pretrain, finetune, supervised, linear eval, distill, and the pipeline's embeddings

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return helpers.write_splits(tmp_path_factory.mktemp("stream-pipeline"), helpers.smooth_images(48, SIZE),
                                helpers.smooth_images(8, SIZE, seed=1))


def _config(data_dir, **overrides):
    return helpers.tiny_config(data_dir, SIZE, {
        "data.stream": "stream", "pretrain.batch_size": "8", "pretrain.epochs": "1",
        "pipeline.label_fractions": "6/class", "pipeline.head_layers": "1", "pipeline.embedding_samples": "8",
        "finetune.batch_size": "8", "finetune.epochs": "1", "finetune.min_steps": "0", "supervised.batch_size": "8",
        "supervised.epochs": "1", "supervised.min_steps": "0", "distill.batch_size": "8", "distill.epochs": "1",
        "distill.min_steps": "0", "evaluate.linear_epochs": "5", "run.knn_bank_size": "16",
        "augment.blur_min_side": "8", **overrides})


def _run(config, run_dir, caplog) -> tuple[PipelineSummary, list[str]]:
    with caplog.at_level(logging.INFO, logger=get_logger().name):
        summary = pipeline(config, run_dir)
    return summary, [m for m in caplog.messages if m.startswith("data: ")]


def test_the_pipeline_streams_every_stage_of_a_folder(folder, tmp_path, caplog):
    summary, lines = _run(_config(folder), tmp_path / "run", caplog)
    assert len(lines) == STAGES and all(line.startswith("data: streaming 48 images") for line in lines)
    assert {r.method for r in summary.rows} == {"fine-tuned (head layer 1)", "supervised only", "linear eval",
                                                "distilled student"}
    assert all(r.val_top1 is not None and r.test_top1 is not None for r in summary.rows)
    assert PipelineSummary.read(tmp_path / "run") == summary and (tmp_path / "run" / "embeddings.pt").is_file()


def test_the_pipeline_streams_every_stage_of_shards(folder, tmp_path, caplog):
    """Shards hold the training images only: every row has a validation score and none a test score."""
    pytest.importorskip("webdataset")
    from simclrv2.data.streaming.shards import prepare_shards

    shards = prepare_shards(folder, tmp_path / "shards", shard_size=10)
    summary, lines = _run(_config(shards, **{"data.dataset": "webdataset"}), tmp_path / "run", caplog)
    assert len(lines) == STAGES and all(line.startswith("data: streaming 48 images") for line in lines)
    assert len(summary.rows) == 4
    assert all(r.val_top1 is not None and r.test_top1 is None for r in summary.rows)
    assert PipelineSummary.read(tmp_path / "run") == summary


def test_missing_shards_are_reported_before_the_run_directory_is_made(tmp_path):
    config = _config(tmp_path / "missing", **{"data.dataset": "webdataset"})
    with pytest.raises(SimCLRv2Error, match=r"^shard folder \S*missing not found; set data.data_dir"):
        pipeline(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
