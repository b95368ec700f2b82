"""The one exception type users see: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class SimCLRv2Error(Exception):
    """Bad input or configuration: the message says what was wrong and what to do."""


class Interrupted(SimCLRv2Error):
    """The user stopped a run (Ctrl-C); its state was saved so ``--resume`` continues it."""

    exit_code = 130
