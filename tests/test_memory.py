import pytest
import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.memory import NegativeQueue, ema_update


def test_queue_is_first_in_first_out_and_wraps_around():
    queue = NegativeQueue(5, 1)
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    assert queue.negatives().flatten().tolist() == [1, 2, 3]
    queue.enqueue(torch.tensor([[4.0], [5.0], [6.0]]))  # 6 overwrites the oldest, 1
    assert sorted(queue.negatives().flatten().tolist()) == [2, 3, 4, 5, 6]
    queue.enqueue(torch.arange(10.0, 17.0).unsqueeze(1))  # more than the capacity: keep the newest 5
    assert sorted(queue.negatives().flatten().tolist()) == [12, 13, 14, 15, 16]


def test_queue_state_round_trips_and_checks_its_shape():
    queue = NegativeQueue(4, 2)
    queue.enqueue(torch.ones(3, 2))
    other = NegativeQueue(4, 2)
    other.load_state_dict(queue.state_dict())
    assert torch.equal(other.negatives(), queue.negatives()) and other.pointer == 3
    with pytest.raises(SimCLRv2Error, match="memory_size"):
        NegativeQueue(8, 2).load_state_dict(queue.state_dict())


def test_ema_update_blends_parameters_and_copies_buffers():
    online, ema = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        online.weight.fill_(3.0)
        ema.weight.fill_(1.0)
        online.running_mean.fill_(7.0)
    ema_update(ema, online, decay=0.75)
    torch.testing.assert_close(ema.weight, torch.full((2,), 0.75 * 1.0 + 0.25 * 3.0))
    torch.testing.assert_close(ema.running_mean, torch.full((2,), 7.0))


def test_pretraining_with_memory_feeds_the_ema_projections_back_as_negatives(tmp_path, quick_config, monkeypatch):
    import simclrv2.stages.pretrain as pretrain_module

    real_loss, sizes = pretrain_module.nt_xent_loss, []

    def spy(z1, z2, temperature, gather=None, extra_negatives=None):
        sizes.append(0 if extra_negatives is None else extra_negatives.shape[0])
        if extra_negatives is not None and extra_negatives.shape[0]:
            norms = extra_negatives.norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)  # normalised projections
        return real_loss(z1, z2, temperature, gather=gather, extra_negatives=extra_negatives)

    monkeypatch.setattr(pretrain_module, "nt_xent_loss", spy)
    config = quick_config(**{"pretrain.memory_size": 256, "pretrain.epochs": 1, "run.knn_every": 0})
    pretrain_module.pretrain(config, tmp_path / "run")
    # 6 steps of 64 images, 2 views each: 0, 128, 256 (full), 256, ...
    assert sizes == [0, 128, 256, 256, 256, 256]
