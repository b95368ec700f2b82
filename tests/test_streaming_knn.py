"""The kNN monitor on the streaming path: the same bank and queries as in memory, decoded to the same pixels,
so a streamed run logs the kNN score an in-memory kNN gives its weights; a collection without labels keeps the
monitor off."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import streaming_helpers as helpers
from simclrv2.checkpoint import load_checkpoint, network_from, read_metrics
from simclrv2.data.streaming import choose_stream
from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.features import encoder_features
from simclrv2.eval.knn import knn_accuracy
from simclrv2.logs import get_logger
from simclrv2.models.spec import ModelSpec
from simclrv2.stages.inputs import streamed_training_data, training_data
from simclrv2.stages.knn_monitor import NO_VALIDATION, knn_sets
from simclrv2.stages.pretrain import pretrain

SIZE = 36  # above 32 px: the evaluation view centre-crops, as at full size
BANK = 20  # of the 40 images outside validation: the bank's draw matters

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return helpers.write_splits(tmp_path_factory.mktemp("stream-knn"), helpers.tall_images(48))


def _config(folder, **overrides):
    return helpers.tiny_config(folder, SIZE, {
        "data.stream": "stream", "pretrain.batch_size": "8", "pretrain.epochs": "1", "run.knn_every": "1",
        "run.knn_k": "1", "run.knn_bank_size": BANK, "run.log_every": "1", "augment.blur_min_side": "8",
        **overrides})


def _sets(config):
    data = config.data
    memory = knn_sets(training_data(dataclasses.replace(data, stream="memory")), BANK)
    stream = choose_stream(data)
    return memory, _streamed(config, BANK), stream


def _streamed(config, bank_size: int):
    return knn_sets(streamed_training_data(choose_stream(config.data), config.data), bank_size)


def test_streamed_bank_and_queries_are_the_in_memory_images_pixel_for_pixel(folder):
    memory, streamed, stream = _sets(_config(folder))
    for kept, read in ((memory.bank, streamed.bank), (memory.queries, streamed.queries)):
        assert [stream.source.relative(i) for i in read.indices.tolist()] == list(kept.ids)
        assert torch.equal(read.labels, kept.labels)
        assert torch.equal(torch.cat(list(read.batches(7))), kept.images)  # 7: batches end part-way
    assert len(streamed.bank) == BANK and len(streamed.queries) == 8


def test_streamed_features_are_the_in_memory_features_in_eval_mode(folder):
    config = _config(folder)
    memory, streamed, _ = _sets(config)
    encoder = ModelSpec.from_config(config.model, SIZE, 3).build_simclr(seed=0).encoder.train()
    kept = encoder_features(encoder, memory.bank, torch.device("cpu"), 6, "fp32")
    read = encoder_features(encoder, streamed.bank, torch.device("cpu"), 6, "fp32")
    assert encoder.training  # put back as it was
    assert read.shape == (BANK, encoder.feature_dim)
    assert torch.allclose(read, kept, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_streamed_pretraining_logs_the_in_memory_knn_score_of_its_weights(folder, tmp_path):
    config = _config(folder)
    result = pretrain(config, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "knn"]
    assert [r["epoch"] for r in records] == [0, 1]  # at the start and the end
    # the reference: an in-memory kNN over the same bank and queries with the run's final weights
    memory, _, _ = _sets(config)
    _, network = network_from(load_checkpoint(result.checkpoint), "final.pt")
    encoder, cpu = network.encoder, torch.device("cpu")
    bank, queries = (encoder_features(encoder, s, cpu, 16, "fp32") for s in (memory.bank, memory.queries))
    expected = knn_accuracy(bank, memory.bank.labels, queries, memory.queries.labels, 4, k=1, temperature=0.1)
    assert records[-1]["knn_top1"] == pytest.approx(expected, abs=1e-9)
    assert result.details["knn_top1"] == pytest.approx(expected, abs=1e-9)


def test_a_collection_without_labels_keeps_the_streamed_monitor_off(tmp_path, caplog):
    root = helpers.write_folder(tmp_path / "flat", helpers.tall_images(12))
    config = _config(root)
    with caplog.at_level(logging.INFO, logger=get_logger().name):
        assert _streamed(config, BANK) is None
    assert NO_VALIDATION in caplog.messages


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_a_damaged_image_is_refused_with_its_name(tmp_path, damage):
    """As pretraining's streamed crops do: one line naming the file (the header unreadable, or the pixels)."""
    root = helpers.write_folder(tmp_path / "bad", helpers.tall_images(12), classes=2)
    path = root / "class0" / "img0000.png"
    path.write_bytes(b"not an image" if damage == "not an image" else path.read_bytes()[:200])
    config = _config(root, **{"data.val_size": "2"})
    streamed = _streamed(config, 1000)  # more than the pool: every image
    with pytest.raises(SimCLRv2Error, match=r"^cannot (read|decode) image \S*img0000\.png .*; remove or replace"):
        [*streamed.bank.batches(4), *streamed.queries.batches(4)]


def test_shards_give_the_folders_bank_and_queries(folder, tmp_path):
    pytest.importorskip("webdataset")
    from simclrv2.data.streaming.shards import prepare_shards

    shards = prepare_shards(folder, tmp_path / "shards", shard_size=10)
    _, from_folder, _ = _sets(_config(folder))
    config = _config(shards, **{"data.dataset": "webdataset"})
    from_shards = _streamed(config, BANK)
    for a, b in ((from_folder.bank, from_shards.bank), (from_folder.queries, from_shards.queries)):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert torch.equal(torch.cat(list(a.batches(16))), torch.cat(list(b.batches(16))))


def test_an_unbounded_bank_is_refused_on_the_streaming_path_before_the_run_starts(folder, tmp_path):
    """``run.knn_bank_size = 0`` (all) would hold features of the whole streamed collection; in memory it stays."""
    config = _config(folder, **{"run.knn_bank_size": "0"})
    with pytest.raises(SimCLRv2Error, match=r"^run\.knn_bank_size = 0 .*; set run\.knn_bank_size to a count"):
        pretrain(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    data = training_data(dataclasses.replace(config.data, stream="memory"))
    assert len(knn_sets(data, 0).bank) == len(data.pool_indices) == 40
