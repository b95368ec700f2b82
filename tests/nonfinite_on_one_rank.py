"""Run by torchrun in tests/test_preemption.py: the pretrain CLI with rank 1's loss made NaN at its 4th step.

A driver script instead of a hook in the package: nothing in simclrv2 exists only for tests.
"""

from __future__ import annotations

import os
import sys

import simclrv2.stages.pretrain as pretrain_module
from simclrv2.cli import main

if os.environ.get("RANK") == "1":
    real_loss, calls = pretrain_module.nt_xent_loss, {"n": 0}

    def nan_at_fourth_step(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    pretrain_module.nt_xent_loss = nan_at_fourth_step

sys.exit(main(sys.argv[1:]))
