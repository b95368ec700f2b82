"""Worker for tests/test_distributed_training.py: one pretraining step of a real SimCLR model on one of two
gloo processes (global BN, DDP, gathered NT-Xent), saving its loss and gradients for the parent to compare."""

from __future__ import annotations

import os

import torch
from torch import nn

from simclrv2 import dist
from simclrv2.losses import nt_xent_loss
from simclrv2.models import build_simclr_model
from simclrv2.models.global_bn import convert_to_global_bn

WORLD = 2
IMAGES = 8  # global batch; 4 per process
TEMPERATURE = 0.5


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_simclr_model(18, width_multiplier=0.125, cifar_stem=True, in_channels=1, head_layers=3).double()


def global_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(IMAGES, 1, 12, 12, generator=g, dtype=torch.float64),
            torch.rand(IMAGES, 1, 12, 12, generator=g, dtype=torch.float64))


def step_loss(model: nn.Module, view1: torch.Tensor, view2: torch.Tensor, gather=None) -> torch.Tensor:
    """The pretraining step's forward: both views in one batch (BN sees 2N images), NT-Xent on the halves."""
    z1, z2 = model(torch.cat([view1, view2])).chunk(2)
    return nt_xent_loss(z1, z2, TEMPERATURE, gather=gather)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_distributed("cpu", timeout_s=60.0)
    try:
        model = convert_to_global_bn(tiny_model())
        ddp = dist.wrap_ddp(model, torch.device("cpu"))
        view1, view2 = global_views()
        mine = slice(rank * IMAGES // WORLD, (rank + 1) * IMAGES // WORLD)
        loss = step_loss(ddp, view1[mine], view2[mine], gather=dist.gather_with_grad)
        loss.backward()
        torch.save({"loss": dist.all_reduce_mean(loss.detach()),
                    "grads": {n: p.grad for n, p in model.named_parameters()},
                    "buffers": dict(model.named_buffers())}, f"{out_dir}/rank{rank}.pt")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
