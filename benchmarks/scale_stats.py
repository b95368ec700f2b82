"""Paired-by-seed statistics and verdicts shared by the scale study's report sections: every difference is taken
between runs of the same seed (the same label subset), and a mean within one sd of zero is said to be so."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from simclrv2.models import resnet

# a recipe choice's stage -> the method its runs are recorded under
STAGE_METHOD = {"finetune": "fine-tuned", "supervised": "supervised"}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def encoder_params(width: float, sk_ratio: float = 0.0, depth: int = 18) -> float:
    """Millions of encoder parameters of the CIFAR-stem ResNet-``depth`` at ``width`` (one channel in)."""
    encoder = resnet(depth, width, cifar_stem=True, in_channels=1, sk_ratio=sk_ratio)
    return sum(p.numel() for p in encoder.parameters()) / 1e6


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f} (n={len(values)})"


def by_seed(rows: list[dict], **match: object) -> dict[int, float]:
    """Test top-1 per seed of the rows whose facts equal ``match``."""
    return {r["seed"]: r["test_top1"] for r in rows if all(r.get(k) == v for k, v in match.items())
            and r.get("test_top1") is not None}


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a - b on the seeds both have: same seed, same label subset, same pretraining."""
    return [a[s] - b[s] for s in sorted(a.keys() & b.keys())]


def _verdict(holds: bool) -> str:
    return "holds" if holds else "**does not hold**"


def _within_spread(gain: list[float]) -> bool:
    """Whether a mean paired difference lies within one sd of zero: its sign alone says little there."""
    return len(gain) > 1 and abs(statistics.fmean(gain)) < statistics.stdev(gain)


def _paired_verdict(gain: list[float], holds: bool) -> str:
    """The verdict on a mean paired difference, saying so where it is within the seed spread."""
    return _verdict(holds) + (" (within the seed spread)" if _within_spread(gain) else "")
