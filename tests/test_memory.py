import pytest
import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.memory import NegativeQueue, ema_update


def column(*values):
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)  # (B, 1)


def stored(queue):
    return queue.negatives().flatten().tolist()


def test_queue_defaults_to_the_papers_64k_projections_of_128():
    queue = NegativeQueue()
    assert (queue.capacity, queue.dim) == (65536, 128)
    assert queue.negatives().shape == (0, 128)


def test_queue_fills_in_order_then_overwrites_the_oldest_rows_first():
    queue = NegativeQueue(5, 1)
    queue.enqueue(column(1, 2, 3))
    assert stored(queue) == [1, 2, 3]  # M = filled rows only
    queue.enqueue(column(4, 5, 6))  # 6 wraps around and overwrites the oldest, 1
    assert stored(queue) == [6, 2, 3, 4, 5]
    queue.enqueue(column(7))  # the oldest is now 2
    assert stored(queue) == [6, 7, 3, 4, 5]
    queue.enqueue(column(8, 9, 10, 11, 12))  # exactly the capacity, from the middle: every row replaced
    assert sorted(stored(queue)) == [8, 9, 10, 11, 12]
    queue.enqueue(column(*range(20, 27)))  # more than the capacity: only the newest 5 stay
    assert sorted(stored(queue)) == [22, 23, 24, 25, 26]
    assert queue.negatives().shape == (5, 1)


def test_queue_stores_float32_copies_detached_from_the_graph():
    queue = NegativeQueue(4, 2)
    z = torch.randn(3, 2, requires_grad=True)
    queue.enqueue(z.bfloat16())
    assert queue.negatives().dtype == torch.float32 and not queue.negatives().requires_grad
    torch.testing.assert_close(queue.negatives(), z.detach().bfloat16().float())


def test_queue_refuses_rows_of_the_wrong_width():
    with pytest.raises(SimCLRv2Error, match=r"\(B, 4\)"):
        NegativeQueue(8, 4).enqueue(torch.zeros(2, 3))
    with pytest.raises(SimCLRv2Error, match="capacity"):
        NegativeQueue(0, 4)


def test_queue_state_round_trips_and_resumes_in_the_same_place():
    queue = NegativeQueue(4, 1)
    queue.enqueue(column(1, 2, 3))
    queue.enqueue(column(4, 5))  # wrapped: [5, 2, 3, 4], pointer 1
    state = queue.state_dict()
    other = NegativeQueue(4, 1)
    other.load_state_dict(state)
    assert stored(other) == stored(queue) and (other.pointer, other.filled) == (1, 4)
    for q in (queue, other):
        q.enqueue(column(9))
    assert stored(other) == stored(queue) == [5, 9, 3, 4]
    assert state["rows"].flatten().tolist() == [5, 2, 3, 4]  # the state is a snapshot


def test_queue_refuses_a_state_of_another_shape_or_a_corrupt_one():
    state = NegativeQueue(4, 2).state_dict()
    with pytest.raises(SimCLRv2Error, match="memory_size"):
        NegativeQueue(8, 2).load_state_dict(state)
    with pytest.raises(SimCLRv2Error, match="corrupt"):
        NegativeQueue(4, 2).load_state_dict({**state, "pointer": 4})


def small_model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_ema_update_blends_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online, ema = small_model(), small_model()
    online(torch.randn(8, 3))  # moves the online BN statistics and its batch counter
    online_before = {k: v.clone() for k, v in online.state_dict().items()}
    ema_before = {n: p.detach().clone() for n, p in ema.named_parameters()}
    ema_update(ema, online, decay=0.75)
    for name, p in ema.named_parameters():
        torch.testing.assert_close(p.detach(), 0.75 * ema_before[name] + 0.25 * online_before[name])
    for name, buffer in ema.named_buffers():
        assert torch.equal(buffer, online_before[name]), name
    for name, value in online.state_dict().items():
        assert torch.equal(value, online_before[name]), "the online model must not change"


def test_ema_decay_limits():
    torch.manual_seed(1)
    online, ema = small_model(), small_model()
    ema_params = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, online, decay=1.0)
    for p, before in zip(ema.parameters(), ema_params, strict=True):
        assert torch.equal(p, before)
    ema_update(ema, online, decay=0.0)
    for p, q in zip(ema.parameters(), online.parameters(), strict=True):
        assert torch.equal(p, q)


def test_ema_update_refuses_different_models():
    with pytest.raises(SimCLRv2Error, match="different parameters"):
        ema_update(nn.Linear(3, 4), nn.Linear(4, 3))
    with pytest.raises(SimCLRv2Error, match="decay"):
        ema_update(nn.Linear(3, 4), nn.Linear(3, 4), decay=1.5)


@pytest.mark.slow
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
