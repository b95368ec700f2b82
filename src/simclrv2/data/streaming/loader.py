"""The streaming batch source: a DataLoader whose batch sampler replays the engine's own steps.

For each step from the resume point on, the sampler takes the step's slice of the epoch's (per-process)
order, draws the step's crop uniforms with a generator seeded as the engine seeds that step, and sends
``(index, uniforms of its views)`` pairs to the workers (pretraining: two views; a classifier: one). The
sampler's position is the step number, already in every checkpoint, so mid-epoch resume is exact; under torchrun
the order is the process's own shard, so processes read disjoint images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from simclrv2.errors import SimCLRv2Error

# (global step, images in the step) -> (views·images, 202) crop uniforms: first views, then second views
CropPlan = Callable[[int, int], torch.Tensor]


def default_workers() -> int:
    """One worker per core but one (the training process needs one), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class StepSampler(Sampler):
    """Yields one list of ``(index, uniforms)`` per step of the current epoch, from ``first`` on; an image's
    uniforms are its rows of the step's plan, one per view (view v of image k: row v·B + k)."""

    def __init__(self, local_batch: int, steps_per_epoch: int, plan: CropPlan) -> None:
        self.local_batch, self.steps_per_epoch, self.plan = local_batch, steps_per_epoch, plan
        self.epoch, self.first = 0, 0
        self.order = torch.zeros(0, dtype=torch.int64)

    def start(self, epoch: int, order: torch.Tensor, first: int) -> None:
        if len(order) < self.steps_per_epoch * self.local_batch:
            raise SimCLRv2Error(f"the epoch order holds {len(order)} indices, fewer than {self.steps_per_epoch} "
                                f"steps of {self.local_batch}")
        self.epoch, self.order, self.first = epoch, order.cpu(), first

    def __len__(self) -> int:
        return self.steps_per_epoch - self.first

    def __iter__(self) -> Iterator[list[tuple[int, torch.Tensor]]]:
        b = self.local_batch
        for i in range(self.first, self.steps_per_epoch):
            indices = self.order[i * b:(i + 1) * b].tolist()
            randoms = self.plan(self.epoch * self.steps_per_epoch + i, len(indices)).cpu()
            yield [(index, randoms[k::len(indices)].clone()) for k, index in enumerate(indices)]


def one_thread(_: int) -> None:
    """A worker's init: workers decode in PIL, so torch threads there would only contend for the cores."""
    torch.set_num_threads(1)


def worker_error(err: SimCLRv2Error) -> SimCLRv2Error:
    """A worker's error, re-raised by the DataLoader with the worker's traceback, as its one message line."""
    lines = [line for line in str(err).splitlines() if line.startswith("simclrv2.errors.")]
    return SimCLRv2Error(lines[-1].split(": ", 1)[-1] if lines else str(err))


class BatchSource:
    """``source(epoch, order, first)`` iterates the (views·B, C, S, S) uint8 crops of steps ``first …`` of
    ``epoch``, on ``device``: the first B rows are the first views of the batch, the next B the second."""

    def __init__(self, dataset: Dataset, local_batch: int, steps_per_epoch: int, plan: CropPlan,
                 workers: int, device: torch.device) -> None:
        self.sampler = StepSampler(local_batch, steps_per_epoch, plan)
        self.device = device
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=workers,
                                 persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                                 worker_init_fn=one_thread if workers else None,
                                 prefetch_factor=2 if workers else None)

    def __call__(self, epoch: int, order: torch.Tensor, first: int) -> Iterator[torch.Tensor]:
        self.sampler.start(epoch, order, first)
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)  # (B, views, C, S, S)
            except StopIteration:
                return
            except SimCLRv2Error as err:
                raise worker_error(err) from None
            batch = batch.to(self.device, non_blocking=True)
            yield batch.transpose(0, 1).reshape(-1, *batch.shape[2:])
