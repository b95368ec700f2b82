"""SimCLRv2's optional memory (§3): extra negatives from an EMA copy of the network, kept in a FIFO queue."""

from __future__ import annotations

import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error


class NegativeQueue:
    """A fixed-capacity FIFO of normalised projections; the oldest rows are overwritten first."""

    def __init__(self, capacity: int, dim: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1 or dim < 1:
            raise SimCLRv2Error(f"the negative queue needs capacity >= 1 and dim >= 1, got {capacity}, {dim}")
        self.rows = torch.zeros(capacity, dim, device=device)
        self.pointer = 0
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """Appends (B, D) rows; with B > capacity only the newest ``capacity`` rows are kept."""
        z = z.detach().to(self.rows.dtype)[-self.capacity :]
        b = z.shape[0]
        end = self.pointer + b
        if end <= self.capacity:
            self.rows[self.pointer : end] = z
        else:
            first = self.capacity - self.pointer
            self.rows[self.pointer :] = z[:first]
            self.rows[: b - first] = z[first:]
        self.pointer = end % self.capacity
        self.filled = min(self.capacity, self.filled + b)

    def negatives(self) -> torch.Tensor:
        """(M, D) the filled rows (order does not matter to the loss)."""
        return self.rows[: self.filled] if self.filled < self.capacity else self.rows

    def state_dict(self) -> dict:
        return {"rows": self.rows, "pointer": self.pointer, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["rows"].shape) != tuple(self.rows.shape):
            raise SimCLRv2Error(f"the saved queue is {tuple(state['rows'].shape)}, this one "
                                f"{tuple(self.rows.shape)}: pretrain.memory_size or the projection size changed")
        self.rows.copy_(state["rows"])
        self.pointer, self.filled = int(state["pointer"]), int(state["filled"])


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float = 0.999) -> None:
    """ema ← decay·ema + (1 − decay)·online for parameters; buffers (BN statistics) are copied."""
    ema_params = list(ema_model.parameters())
    online = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(online):
        raise SimCLRv2Error("the EMA model and the model have different parameters")
    torch._foreach_lerp_(ema_params, online, 1.0 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)
