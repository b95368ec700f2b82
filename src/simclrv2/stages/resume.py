"""What makes a resumed run the same run: the identity of its config, and per-step random seeds."""

from __future__ import annotations

from typing import Any

from simclrv2.config import config_to_dict
from simclrv2.errors import SimCLRv2Error

# options that change how fast a run goes, not what it computes: a resumed run may change them
NOT_IDENTITY = frozenset({"data.workers"})
_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads (seed, rank, step) over the seed space


def step_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of one process at one step.

    Seeding per step makes a resumed run draw exactly the views the uninterrupted run would have drawn,
    without saving generator states, and gives every process its own views.
    """
    return (seed * _MIX + rank * 1_000_003 + step) % (2**63 - 1)


def config_differences(saved: dict[str, Any], current: dict[str, Any], sections: tuple[str, ...],
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """The identity options whose values differ. An option the saved run does not record (added to the package
    after it was saved) counts as its ``defaults`` value: the saved run computed what that default computes, so
    upgrading the package does not strand a half-finished run."""
    diffs = []
    for section in sections:
        old, new = saved.get(section, {}), current.get(section, {})
        added = (defaults or {}).get(section, {})
        for key in sorted(set(old) | set(new)):
            if f"{section}.{key}" in NOT_IDENTITY:
                continue
            if key not in old and key in added and new.get(key) == added[key]:
                continue
            a, b = old.get(key), new.get(key)
            if isinstance(a, list):
                a = tuple(a)
            if isinstance(b, list):
                b = tuple(b)
            if a != b:
                diffs.append(f"{section}.{key}: {a!r} -> {b!r}")
    return diffs


def check_resumable(payload: dict[str, Any], config: Any, sections: tuple[str, ...], stage: str) -> None:
    """Refuses to continue a run with a config that would make it a different experiment."""
    if payload.get("stage") != stage:
        raise SimCLRv2Error(f"the checkpoint belongs to stage {payload.get('stage')!r}, not {stage!r}")
    defaults = config_to_dict(type(config)())
    diffs = config_differences(payload.get("config", {}), config_to_dict(config), sections, defaults)
    if diffs:
        raise SimCLRv2Error(
            f"cannot resume: the config differs from the saved run ({'; '.join(diffs[:4])}); "
            "restore it, or use --overwrite or another --run-dir"
        )
