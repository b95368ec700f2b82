"""TensorBoard scalars beside ``metrics.jsonl``, when the optional ``tensorboard`` package is installed
(``pip install 'simclrv2[tensorboard]'``): the JSON lines stay the record, TensorBoard is a way to look at them."""

from __future__ import annotations

import numbers
import sys
import types
from pathlib import Path
from typing import Any

from simclrv2.logs import get_logger

SKIPPED_KEYS = ("step", "epoch", "time", "event", "stage")


def _use_tensorboards_own_writer() -> None:
    """TensorBoard's writer imports all of TensorFlow when that is installed (the tf extra, for ``simclrv2
    import``): seconds and hundreds of MB on every run for event files its built-in stub writes alike. A
    ``tensorboard.compat.notf`` module is TensorBoard's own switch to the stub."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def tensorboard_available() -> bool:
    _use_tensorboards_own_writer()
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardSink:
    """Writes every numeric field of a metrics record as the scalar ``stage/key`` at the record's step.

    A resumed run passes its checkpoint's step: TensorBoard then hides the events an interrupted part wrote after
    it, as ``metrics.jsonl`` drops its records past that step."""

    def __init__(self, log_dir: Path, resumed_at: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if step is None:
            return
        stage = record.get("stage", "run")
        for key, value in record.items():
            if key not in SKIPPED_KEYS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"{stage}/{key}", float(value), int(step))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_sink(log_dir: Path, wanted: bool, resumed_at: int | None = None) -> TensorBoardSink | None:
    """A sink when asked for and installed; one line saying how to get it when asked for and missing."""
    if not wanted:
        return None
    if not tensorboard_available():
        get_logger().info("TensorBoard logging off: pip install 'simclrv2[tensorboard]' to turn it on "
                          "(metrics.jsonl has every value)")
        return None
    return TensorBoardSink(log_dir, resumed_at)
