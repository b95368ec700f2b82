"""Messages for people: one ``simclrv2`` logger, written by rank 0 only, and progress bars only on a terminal.

Metrics go to ``metrics.jsonl`` (see :class:`simclrv2.checkpoint.MetricsLog`); this module is for the lines a
person reads while a run goes.
"""

from __future__ import annotations

import logging
import sys

from simclrv2 import dist

LOGGER_NAME = "simclrv2"


class _MainProcessOnly(logging.Filter):
    """Under torchrun every process would print the same line; only rank 0 speaks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return dist.is_main()


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is when a line is emitted (not the stream of the first call), so a
    redirected or captured stdout keeps working."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # a logging failure must not stop training
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain lines on stdout (what a user of the command line sees); library users keep their own handlers."""
    logger = get_logger()
    if any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_MainProcessOnly())
    logger.addHandler(handler)
    logger.setLevel(level)


def show_progress(enabled: bool) -> bool:
    """A progress bar only where it helps: asked for, rank 0, and a terminal (in a log file tqdm would write
    thousands of carriage-return lines)."""
    return enabled and dist.is_main() and sys.stderr.isatty()
