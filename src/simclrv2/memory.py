"""SimCLRv2's optional memory (§3): extra negatives from an EMA copy of the network, kept in a FIFO queue.

The queue holds normalised projections of past batches computed by a slowly moving (EMA) copy of encoder + head,
so they stay consistent with the current network; :func:`simclrv2.losses.nt_xent_loss` takes them as
``extra_negatives`` next to the in-batch ones.
"""

from __future__ import annotations

import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error


class NegativeQueue:
    """A fixed-capacity FIFO of normalised projections (SimCLRv2: 65,536 rows); the oldest rows go first.

    Rows live in float32 on ``device``; ``enqueue`` detaches and converts, so it can take bf16 projections.
    """

    def __init__(self, capacity: int = 65536, dim: int = 128, device: torch.device | str = "cpu") -> None:
        if capacity < 1 or dim < 1:
            raise SimCLRv2Error(f"the negative queue needs capacity >= 1 and dim >= 1, got {capacity}, {dim}")
        self.rows = torch.zeros(capacity, dim, device=device)  # (capacity, D)
        self.pointer = 0  # the next row to write: the oldest row once the queue is full
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.rows.shape[0]

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """Appends (B, D) rows, overwriting the oldest; with B > capacity only the newest ``capacity`` stay."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise SimCLRv2Error(f"the negative queue stores (B, {self.dim}) projections, got {tuple(z.shape)}")
        z = z.detach()[-self.capacity :].to(device=self.rows.device, dtype=self.rows.dtype)
        b = z.shape[0]
        first = min(b, self.capacity - self.pointer)  # rows that fit before the end; the rest wrap to the start
        self.rows[self.pointer : self.pointer + first] = z[:first]
        self.rows[: b - first] = z[first:]
        self.pointer = (self.pointer + b) % self.capacity
        self.filled = min(self.capacity, self.filled + b)

    def negatives(self) -> torch.Tensor:
        """(M, D) the M filled rows (storage order, not age order: the loss does not care)."""
        return self.rows[: self.filled]

    def state_dict(self) -> dict:
        """A snapshot for checkpoints (the rows are copied, so later enqueues do not change it)."""
        return {"rows": self.rows.clone(), "pointer": self.pointer, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        rows, pointer, filled = state["rows"], int(state["pointer"]), int(state["filled"])
        if tuple(rows.shape) != tuple(self.rows.shape):
            raise SimCLRv2Error(f"the saved queue is {tuple(rows.shape)}, this one {tuple(self.rows.shape)}: "
                                "pretrain.memory_size or the projection size changed")
        if not (0 <= pointer < self.capacity and 0 <= filled <= self.capacity):
            raise SimCLRv2Error(f"the saved queue state is corrupt: pointer {pointer}, filled {filled} of "
                                f"{self.capacity}")
        self.rows.copy_(rows)
        self.pointer, self.filled = pointer, filled


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float = 0.999) -> None:
    """ema ← decay·ema + (1 − decay)·online for every parameter; buffers (BN statistics) are copied.

    Buffers are copied rather than averaged: BN running statistics and counters (``num_batches_tracked``) are
    not weights, and in train mode the EMA network normalises with its own batch statistics anyway.
    """
    if not 0 <= decay <= 1:
        raise SimCLRv2Error(f"the EMA decay must be in [0, 1], got {decay}")
    ema_params, online = list(ema_model.parameters()), [p.detach() for p in model.parameters()]
    ema_buffers, buffers = list(ema_model.buffers()), list(model.buffers())
    shapes = [tuple(p.shape) for p in ema_params + ema_buffers]
    if shapes != [tuple(p.shape) for p in online + buffers]:
        raise SimCLRv2Error("the EMA model and the model have different parameters or buffers; build the EMA "
                            "model as a copy of the model (copy.deepcopy)")
    if ema_params:
        torch._foreach_lerp_(ema_params, online, 1.0 - decay)
    for ema_buffer, buffer in zip(ema_buffers, buffers, strict=True):
        ema_buffer.copy_(buffer)
