"""Distributed helpers and global BN: single-process defaults, and 2 gloo processes with DIFFERENT data per
process vs. one process on the concatenated data (docs/recipe.md#distributed-training: a symmetric test passed while a
gather's backward was wrong)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from torch import nn

import dist_helpers
from conftest import free_port
from dist_helpers import BN_ROWS, ROWS, TEMPERATURE, WORLD
from simclrv2 import dist
from simclrv2.dist import _shard
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.global_bn import GlobalBatchNorm1d, GlobalBatchNorm2d, convert_to_global_bn
from simclrv2.models.head import ProjectionHead

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------- single process, no group


def test_without_group_this_is_rank_0_of_1():
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    dist.barrier()


def test_without_group_collectives_are_identities():
    x = torch.randn(4, 3, requires_grad=True)
    full, offset = dist.gather_with_grad(x)
    assert full is x and offset == 0
    assert dist.all_gather_tensor(x) is x
    assert dist.all_reduce_mean(x) is x


def test_without_torchrun_env_init_distributed_stays_single_process(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "somehost")  # cluster scripts export this alone; not a request
    assert dist.init_distributed("cpu") is False
    assert dist.world_size() == 1


def test_half_set_torchrun_env_raises_clearly(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SimCLRv2Error, match="half-set.*WORLD_SIZE"):
        dist.init_distributed("cpu")


def test_inconsistent_torchrun_env_raises_clearly(monkeypatch):
    env = {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SimCLRv2Error, match="RANK=2, WORLD_SIZE=2"):
        dist.init_distributed("cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(SimCLRv2Error, match="RANK='zero' must be an integer"):
        dist.init_distributed("cpu")


def test_shard_indices_single_process_covers_every_index_once():
    order = dist.shard_indices(10, epoch=0, seed=3)
    assert order.dtype == torch.int64
    assert sorted(order.tolist()) == list(range(10))
    assert order.tolist() != list(range(10))  # shuffled
    assert dist.shard_indices(10, epoch=0, seed=3, shuffle=False).tolist() == list(range(10))


# ---------------------------------------------------------------- shards on simulated ranks


def _shards(n, epoch, seed=1, world=3, **kwargs):
    options = {"shuffle": True, "drop_last": True, "batch_size": None} | kwargs
    return [_shard(n, epoch, seed, r, world, **options) for r in range(world)]


def test_shards_are_disjoint_equal_and_cover_the_truncated_permutation():
    n, world, batch = 23, 3, 2
    shards = _shards(n, epoch=4, seed=1, world=world, batch_size=batch)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(1 + 4))
    kept = permutation[: n - n % (world * batch)]  # 18 of 23
    assert {len(s) for s in shards} == {len(kept) // world}
    assert len(shards[0]) % batch == 0
    merged = torch.cat(shards)
    assert len(set(merged.tolist())) == len(merged)
    assert set(merged.tolist()) == set(kept.tolist())
    # Strided: step k of all processes together is one block of the shared permutation.
    step0 = torch.cat([s[:batch] for s in shards])
    assert set(step0.tolist()) == set(kept[: world * batch].tolist())


def test_shards_agree_across_processes_and_reshuffle_across_epochs():
    first, again = _shards(20, epoch=2), _shards(20, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len(set(torch.cat(first).tolist())) == 18  # 20 cut to a multiple of 3, no duplicates
    later = _shards(20, epoch=3)
    assert not torch.equal(first[0], later[0])
    other_seed = _shards(20, epoch=2, seed=99)
    assert not torch.equal(first[0], other_seed[0])


def test_shards_without_drop_last_keep_every_index_once():
    shards = _shards(10, epoch=0, world=3, drop_last=False)
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    assert _shards(7, epoch=0, world=2, shuffle=False)[1].tolist() == [1, 3, 5]


def test_shards_of_fewer_items_than_one_global_batch_raise():
    with pytest.raises(SimCLRv2Error, match="fewer than one global batch"):
        _shards(5, epoch=0, world=2, batch_size=3)


# ---------------------------------------------------------------- global BN without a group


@pytest.mark.parametrize("momentum", [0.1, None])
def test_global_bn_without_group_matches_batchnorm(momentum):
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    bn = GlobalBatchNorm2d(3, momentum=momentum)
    bn.load_state_dict(reference.state_dict())
    for step in range(2):
        x = torch.randn(4, 3, 5, 5) * 3 + step
        xs = [x.clone().requires_grad_() for _ in range(2)]
        outputs = [module(inp) for module, inp in zip((reference, bn), xs, strict=True)]
        for out in outputs:
            (out.pow(2) * torch.arange(out.numel()).view_as(out)).sum().backward()
        torch.testing.assert_close(outputs[1], outputs[0])
        torch.testing.assert_close(xs[1].grad, xs[0].grad)
    torch.testing.assert_close(bn.state_dict(), reference.state_dict())
    torch.testing.assert_close(bn.weight.grad, reference.weight.grad)
    reference.eval()
    bn.eval()
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(bn(x), reference(x))


def test_convert_keeps_parameters_buffers_and_a_bias_less_last_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(8))
    model[1].weight.requires_grad_(False)  # frozen stays frozen
    head = ProjectionHead(8, 8, 4, num_layers=2)
    model.append(head)
    model.eval()
    originals = {name: p for name, p in model.named_parameters()}
    x = torch.randn(3, 3, 6, 6)
    expected = model(x)
    buffers = {name: b for name, b in model.named_buffers()}

    converted = convert_to_global_bn(model)

    kinds = [type(m) for m in converted.modules()]
    assert kinds.count(GlobalBatchNorm2d) == 1 and kinds.count(GlobalBatchNorm1d) == 2
    assert not any(issubclass(k, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)) for k in kinds)
    assert {name: p for name, p in converted.named_parameters()}.keys() == originals.keys()
    assert all(p is originals[name] for name, p in converted.named_parameters())
    assert all(b is buffers[name] for name, b in converted.named_buffers())
    last_bn = head.layers[-1][1]
    assert isinstance(last_bn, GlobalBatchNorm1d) and last_bn.affine and last_bn.bias is None
    assert not converted[1].weight.requires_grad and not converted.training
    torch.testing.assert_close(converted(x), expected)


def test_convert_on_cpu_without_nccl_never_gives_syncbatchnorm():
    converted = convert_to_global_bn(nn.Sequential(nn.BatchNorm1d(4)), prefer_sync_batchnorm=True)
    assert type(converted[0]) is GlobalBatchNorm1d
    converted.train()
    converted(torch.randn(5, 4)).sum().backward()  # runs on CPU, unlike SyncBatchNorm


def test_convert_with_an_nccl_group_prefers_syncbatchnorm_unless_told_not_to(monkeypatch):
    from simclrv2.models import global_bn

    monkeypatch.setattr(global_bn, "_nccl_group", lambda: True)  # no GPU here: only the module swap is checked
    head = ProjectionHead(8, 8, 4, num_layers=2)
    weight = head.layers[-1][1].weight
    synced = convert_to_global_bn(head).layers[-1][1]
    assert type(synced) is nn.SyncBatchNorm and synced.weight is weight and synced.bias is None
    plain = convert_to_global_bn(ProjectionHead(8, 8, 4, num_layers=2), prefer_sync_batchnorm=False)
    assert type(plain.layers[-1][1]) is GlobalBatchNorm1d


# ---------------------------------------------------------------- two gloo processes


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Spawns WORLD processes once for the whole module (each spawn costs seconds of imports)."""
    out = tmp_path_factory.mktemp("dist")
    inputs = dist_helpers.make_inputs()
    torch.save(inputs, out / "inputs.pt")
    scenarios = ["basics", "gather", "global_bn", "head", "nt_xent"]
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=dist_helpers.worker, args=(r, port, str(out), scenarios)) for r in range(WORLD)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    hung = [p for p in processes if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, "a worker hung: a collective was not matched on every process"
    assert [p.exitcode for p in processes] == [0] * WORLD
    return inputs, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _scenario(two_processes, name):
    inputs, results = two_processes
    for r, result in enumerate(results):
        assert "error" not in result[name], f"rank {r}:\n{result[name].get('error')}"
    return inputs, [result[name] for result in results]


def test_two_processes_know_their_rank_and_reduce_metrics(two_processes):
    _, results = _scenario(two_processes, "basics")
    assert all(result["init"] for result in two_processes[1])
    for r, result in enumerate(results):
        identity = (result["rank"], result["world"], result["local_rank"], result["main"])
        assert identity == (r, WORLD, r, r == 0)
        assert result["mean"].item() == pytest.approx(1.5)
        assert result["mean_int"].item() == pytest.approx(1.5)
        assert result["gathered_labels"].tolist() == [0, 1, 10, 11]
        assert "same shape on every process" in result["mismatch"]
    assert torch.equal(torch.cat([r["shard"] for r in results]).sort().values,
                       torch.cat(_shards(11, epoch=3, seed=4, world=WORLD, batch_size=2)).sort().values)
    assert not set(results[0]["shard"].tolist()) & set(results[1]["shard"].tolist())


def test_gather_with_grad_sends_every_process_loss_gradient_to_the_owner(two_processes):
    inputs, results = _scenario(two_processes, "gather")
    x = inputs["x"].clone().requires_grad_()
    scale = inputs["scale"].clone().requires_grad_()
    full = x * scale
    losses = [dist_helpers.asymmetric_loss(full, inputs["loss_weights"][r], r * ROWS) for r in range(WORLD)]
    own_only = torch.autograd.grad(losses[0], x, retain_graph=True)[0][:ROWS]
    sum(losses).backward()
    for r, result in enumerate(results):
        rows = slice(r * ROWS, (r + 1) * ROWS)
        assert result["offset"] == r * ROWS
        torch.testing.assert_close(result["full"], full.detach())
        torch.testing.assert_close(result["x_grad"], x.grad[rows])
    torch.testing.assert_close(sum(result["scale_grad"] for result in results), scale.grad)
    # The test tells a wrong backward apart: skipping the all-reduce, or averaging it, changes the gradient.
    assert not torch.allclose(own_only, x.grad[:ROWS])
    assert not torch.allclose(x.grad[:ROWS] / WORLD, x.grad[:ROWS])


def test_gathered_nt_xent_equals_single_process_loss_on_the_global_batch(two_processes):
    from simclrv2.losses import nt_xent_loss

    inputs, results = _scenario(two_processes, "nt_xent")
    projection = inputs["projection"].clone().requires_grad_()
    v1, v2 = (inputs[k].clone().requires_grad_() for k in ("views1", "views2"))
    loss = nt_xent_loss(v1 @ projection, v2 @ projection, TEMPERATURE)
    loss.backward()
    # DDP semantics: the objective is the mean of the per-process losses, parameter gradients are averaged.
    torch.testing.assert_close(sum(r["loss"] for r in results) / WORLD, loss.detach())
    torch.testing.assert_close(sum(r["projection_grad"] for r in results) / WORLD, projection.grad)
    for r, result in enumerate(results):
        rows = slice(r * ROWS, (r + 1) * ROWS)
        torch.testing.assert_close(result["views1_grad"] / WORLD, v1.grad[rows])
        torch.testing.assert_close(result["views2_grad"] / WORLD, v2.grad[rows])


def test_global_bn_on_two_processes_equals_batchnorm_on_the_concatenated_batch(two_processes):
    inputs, results = _scenario(two_processes, "global_bn")
    offsets = dist_helpers.bn_offsets()
    reference = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        reference.weight.copy_(inputs["bn_weight"])
        reference.bias.copy_(inputs["bn_bias"])
    x = inputs["bn_x"].clone().requires_grad_()
    y = reference(x)
    weights = inputs["bn_loss_weights"]
    sum(
        dist_helpers.bn_loss(y[offsets[r] : offsets[r + 1]], weights[offsets[r] : offsets[r + 1]])
        for r in range(WORLD)
    ).backward()
    reference.eval()
    y_eval = reference(inputs["bn_eval_x"]).detach()
    for r, result in enumerate(results):
        rows = slice(offsets[r], offsets[r + 1])
        assert result["type"] == "GlobalBatchNorm2d"  # never SyncBatchNorm on CPU
        assert result["y"].shape[0] == BN_ROWS[r]
        torch.testing.assert_close(result["y"], y.detach()[rows])
        torch.testing.assert_close(result["x_grad"], x.grad[rows])
        torch.testing.assert_close(result["running_mean"], reference.running_mean)
        torch.testing.assert_close(result["running_var"], reference.running_var)
        assert result["num_batches_tracked"].item() == 1
        torch.testing.assert_close(result["y_eval"], y_eval)
    torch.testing.assert_close(sum(r["weight_grad"] for r in results), reference.weight.grad)
    torch.testing.assert_close(sum(r["bias_grad"] for r in results), reference.bias.grad)


def test_converted_head_with_bias_less_bn_on_two_processes_equals_one_process(two_processes):
    inputs, results = _scenario(two_processes, "head")
    offsets = dist_helpers.bn_offsets()
    reference = dist_helpers.head_model()
    z = reference(inputs["head_x"])
    z.pow(2).sum().backward()
    for r, result in enumerate(results):
        assert result["last_bias_is_none"]
        assert "GlobalBatchNorm1d" in result["types"]
        assert not {"BatchNorm1d", "SyncBatchNorm"} & set(result["types"])
        torch.testing.assert_close(result["z"], z.detach()[offsets[r] : offsets[r + 1]])
    for name, p in reference.named_parameters():
        torch.testing.assert_close(sum(result["grads"][name] for result in results), p.grad)
