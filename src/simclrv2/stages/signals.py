"""Stopping a run cleanly: SIGTERM, SIGINT and SIGUSR1 become a flag the training loop checks between steps."""

from __future__ import annotations

import signal
from typing import Any

import torch

from simclrv2 import dist

_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class StopSignals:
    """Turns SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before preemption) into a flag the loop checks at the
    next step boundary, so the run saves a consistent checkpoint and exits; handlers installed before are
    chained. Only the main thread may install handlers: elsewhere this does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def __enter__(self) -> StopSignals:
        try:
            for sig in _STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self.__exit__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def agreed(self, distributed: bool) -> int:
        """The stop signal any process received (0: none): every process stops at the same step, so a SIGTERM
        sent to one rank leaves one consistent checkpoint and no process waiting in a collective."""
        received = torch.tensor([float(self.received or 0)])
        if distributed:
            received = dist.all_reduce_max(received)
        return int(received.item())


def exit_code(signum: int) -> int:
    return 128 + int(signum)  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
