"""Importable pieces of the two-process tests: spawned workers must find their target by module name.

The parent builds every input once (``make_inputs``); each worker joins a gloo group through
``init_distributed`` (torchrun's environment variables), runs every scenario on its own rows and saves what it
computed. The tests compare those results with single-process references on the concatenated data.
"""

from __future__ import annotations

import importlib
import os
import traceback
from pathlib import Path

import torch
from torch import Tensor, nn

from simclrv2 import dist
from simclrv2.errors import SimCLRv2Error
from simclrv2.models.global_bn import convert_to_global_bn

WORLD = 2
ROWS = 3  # rows per process in the gather tests
BN_ROWS = (2, 3)  # unequal on purpose: global statistics must weigh processes by their counts
TEMPERATURE = 0.5


def make_inputs(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows, bn_rows = WORLD * ROWS, sum(BN_ROWS)
    f64 = {"generator": g, "dtype": torch.float64}
    return {
        # gather_with_grad: different data per process, a shared parameter, per-process loss weights
        "x": torch.randn(rows, 4, **f64),
        "scale": torch.rand(4, **f64) + 0.5,
        "loss_weights": torch.randn(WORLD, rows, 4, **f64),
        # NT-Xent: two views through a shared linear projection
        "views1": torch.randn(rows, 5, generator=g),
        "views2": torch.randn(rows, 5, generator=g),
        "projection": torch.randn(5, 4, generator=g),
        # global BN 2d: shifted and scaled so the statistics are far from 0 and 1
        "bn_x": torch.randn(bn_rows, 3, 4, 4, **f64) * 2.0 + 1.5,
        "bn_weight": torch.rand(3, **f64) + 0.5,
        "bn_bias": torch.randn(3, **f64),
        "bn_loss_weights": torch.randn(bn_rows, 3, 4, 4, **f64),
        "bn_eval_x": torch.randn(2, 3, 4, 4, **f64),
        # converted head-like model (BN1d, the last one without bias)
        "head_x": torch.randn(bn_rows, 6, **f64),
    }


def bn_offsets() -> list[int]:
    return [sum(BN_ROWS[:r]) for r in range(WORLD + 1)]


def asymmetric_loss(full: Tensor, weights: Tensor, offset: int) -> Tensor:
    """Nonlinear, weighs every row differently and singles out this process's rows, so a backward that skips
    the all-reduce, or averages instead of summing, gives a different gradient."""
    return ((full * weights).sum(dim=1) ** 2).sum() + full[offset : offset + ROWS].pow(3).sum()


def bn_loss(y: Tensor, weights: Tensor) -> Tensor:
    return (y.pow(2) * weights).sum() + y.sum()


def head_model() -> nn.Sequential:
    """A tiny projection-head-like stack whose last BN has no β; seeded, so every process builds the same."""
    generator = torch.Generator().manual_seed(7)
    model = nn.Sequential(
        nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(),
        nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4),
    ).double()
    model[4].register_parameter("bias", None)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) + 0.5)
    return model


def _basics(rank: int, inputs: dict[str, Tensor]) -> dict:
    try:
        dist.gather_with_grad(torch.zeros(2 + rank, 3))  # unequal N must fail on every process, not hang
        mismatch = ""
    except SimCLRv2Error as error:
        mismatch = str(error)
    return {
        "rank": dist.rank(), "world": dist.world_size(), "local_rank": dist.local_rank(),
        "main": dist.is_main(),
        "mean": dist.all_reduce_mean(torch.tensor([float(rank + 1)])),
        "mean_int": dist.all_reduce_mean(torch.tensor(rank + 1)),
        "gathered_labels": dist.all_gather_tensor(torch.tensor([10 * rank, 10 * rank + 1])),
        "shard": dist.shard_indices(11, epoch=3, seed=4, batch_size=2), "mismatch": mismatch,
    }


def _gather(rank: int, inputs: dict[str, Tensor]) -> dict:
    scale = inputs["scale"].clone().requires_grad_()
    x = inputs["x"][rank * ROWS : (rank + 1) * ROWS].clone().requires_grad_()
    full, offset = dist.gather_with_grad(x * scale)
    loss = asymmetric_loss(full, inputs["loss_weights"][rank], offset)
    loss.backward()
    return {"full": full.detach(), "offset": offset, "x_grad": x.grad, "scale_grad": scale.grad}


def _nt_xent(rank: int, inputs: dict[str, Tensor]) -> dict:
    nt_xent_loss = importlib.import_module("simclrv2.losses").nt_xent_loss
    projection = inputs["projection"].clone().requires_grad_()
    rows = slice(rank * ROWS, (rank + 1) * ROWS)
    v1, v2 = (inputs[k][rows].clone().requires_grad_() for k in ("views1", "views2"))
    loss = nt_xent_loss(v1 @ projection, v2 @ projection, TEMPERATURE, gather=dist.gather_with_grad)
    loss.backward()
    return {"loss": loss.detach(), "projection_grad": projection.grad, "views1_grad": v1.grad,
            "views2_grad": v2.grad}


def _global_bn(rank: int, inputs: dict[str, Tensor]) -> dict:
    offsets = bn_offsets()
    rows = slice(offsets[rank], offsets[rank + 1])
    bn = convert_to_global_bn(nn.BatchNorm2d(3).double())
    with torch.no_grad():
        bn.weight.copy_(inputs["bn_weight"])
        bn.bias.copy_(inputs["bn_bias"])
    x = inputs["bn_x"][rows].clone().requires_grad_()
    y = bn(x)
    bn_loss(y, inputs["bn_loss_weights"][rows]).backward()
    bn.eval()
    with torch.no_grad():
        y_eval = bn(inputs["bn_eval_x"])
    return {
        "type": type(bn).__name__, "y": y.detach(), "x_grad": x.grad, "weight_grad": bn.weight.grad,
        "bias_grad": bn.bias.grad, "running_mean": bn.running_mean, "running_var": bn.running_var,
        "num_batches_tracked": bn.num_batches_tracked, "y_eval": y_eval,
    }


def _head(rank: int, inputs: dict[str, Tensor]) -> dict:
    offsets = bn_offsets()
    model = convert_to_global_bn(head_model())
    z = model(inputs["head_x"][offsets[rank] : offsets[rank + 1]])
    z.pow(2).sum().backward()
    return {
        "types": [type(m).__name__ for m in model.modules()], "z": z.detach(),
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "last_bias_is_none": model[4].bias is None,
    }


SCENARIOS = {
    "basics": _basics, "gather": _gather, "nt_xent": _nt_xent, "global_bn": _global_bn, "head": _head,
}


def worker(rank: int, port: int, out_dir: str, scenarios: list[str]) -> None:
    """One of WORLD processes: joins through torchrun's variables, runs the scenarios on the inputs the parent
    saved in ``out_dir``, saves its results there.

    The parent chooses the scenarios, so every process runs the same collectives in the same order."""
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    inputs = torch.load(Path(out_dir) / "inputs.pt")
    results: dict = {"init": dist.init_distributed("cpu", timeout_s=60.0)}
    try:
        for name in scenarios:
            try:
                results[name] = SCENARIOS[name](rank, inputs)
            except Exception:  # recorded, so each test reports its own failure
                results[name] = {"error": traceback.format_exc()}
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
