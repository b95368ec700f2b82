"""Pretraining on the streaming path: the in-memory path's losses for the same seed, exact resume after a
signal mid-epoch, and disjoint reads by two gloo processes (folder and shards)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

import simclrv2.stages.pretrain as pretrain_module
import streaming_helpers as helpers
from conftest import free_port
from simclrv2.checkpoint import load_checkpoint
from simclrv2.errors import Interrupted
from simclrv2.stages.pretrain import pretrain

SIZE = 16

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return helpers.write_splits(tmp_path_factory.mktemp("stream-train"), helpers.smooth_images(48, SIZE))


def _config(folder, **overrides):
    return helpers.tiny_config(folder, SIZE, {
        "data.channels": "0",  # the folder's own (RGB)
        "data.val_size": "0", "pretrain.batch_size": "8", "pretrain.epochs": "2", "run.log_every": "1",
        "augment.blur_min_side": "8", **overrides})


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)


@pytest.mark.slow
def test_streamed_pretraining_has_the_in_memory_losses_for_the_same_seed(folder, tmp_path):
    """With the weights held still (a learning rate of 1e-9), every step's loss measures that step's views: the
    streamed views are the in-memory ones but for PIL's resampling of the same boxes. (Training for real, the
    tiny batch of 8 turns that resampling noise into diverging weights within two steps.)"""
    still = {"pretrain.optimizer.base_lr": "1e-9"}
    pretrain(_config(folder, **{"data.stream": "memory", **still}), tmp_path / "memory")
    pretrain(_config(folder, **{"data.stream": "stream", **still}), tmp_path / "stream")
    pretrain(_config(folder, **{"data.stream": "stream", "run.seed": 1, **still}), tmp_path / "other-seed")
    runs = ("memory", "stream", "other-seed")
    memory, streamed, other = (torch.tensor(helpers.losses(tmp_path / name)) for name in runs)
    assert len(memory) == len(streamed) == 12
    assert (streamed - memory).abs().max() < 1e-2
    assert (other - memory).abs().mean() > 5e-2  # another seed: other views, other losses


@pytest.mark.slow
def test_a_signal_mid_epoch_and_resume_are_exact_on_the_streaming_path(folder, tmp_path, monkeypatch):
    config = _config(folder, **{"data.stream": "stream", "data.workers": "1"})
    straight = pretrain(config, tmp_path / "straight")
    with monkeypatch.context() as patch, pytest.raises(Interrupted, match="--resume"):
        helpers.signal_at_call(patch, pretrain_module, "simclr_views_from_crops", 4)
        pretrain(config, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 4  # mid-epoch (6 a epoch)
    # another worker count is the same run: it changes speed, not what is computed
    pretrain(_config(folder, **{"data.stream": "stream", "data.workers": "2"}), tmp_path / "resumed", resume=True)
    assert _same_weights(load_checkpoint(straight.checkpoint)["model"],
                         load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")["model"])
    assert helpers.losses(tmp_path / "resumed") == helpers.losses(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_two_gloo_processes_read_disjoint_parts(tmp_path, kind):
    data = helpers.write_folder(tmp_path / "ids", helpers.identity_images(34, 8))  # 34: two images left over
    if kind == "shards":
        pytest.importorskip("webdataset")
        from simclrv2.data.streaming.shards import prepare_shards

        data = prepare_shards(data, tmp_path / "shards", shard_size=10)
    context, port = multiprocessing.get_context("spawn"), free_port()
    processes = [context.Process(target=helpers.read_epoch_worker, args=(r, 2, port, str(data), kind, str(tmp_path)))
                 for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0, (tmp_path / f"rank{processes.index(p)}.err").read_text()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    seen = [sorted(i for step in r["seen"] for i in step) for r in results]
    assert seen[0] == sorted(results[0]["order"].tolist()) and seen[1] == sorted(results[1]["order"].tolist())
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 32
