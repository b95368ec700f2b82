"""Timing several paths of the same work in one process, fairly: what the A/B benchmarks share.

On these machines a whole process can run 20 % faster or slower than the next, so paths are compared within one
process, round by round: every round runs each path once, forwards and backwards in turn (A B, then B A), so that
none always runs first, and each round gives a ratio between paths.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence


def rotated_rounds(paths: Sequence[str], timed: Callable[[str], float], rounds: int, warmup: int = 1
                   ) -> dict[str, list[float]]:
    """Each path's seconds (``timed(path)``) in ``rounds`` rounds, after ``warmup`` untimed calls of each."""
    for name in paths:  # oneDNN's primitives, the allocator
        for _ in range(warmup):
            timed(name)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for index in range(rounds):
        for name in paths if index % 2 == 0 else tuple(reversed(paths)):
            seconds[name].append(timed(name))
    return seconds


def median_seconds(seconds: dict[str, list[float]]) -> dict[str, float]:
    return {f"{name}_median_s": round(statistics.median(times), 4) for name, times in seconds.items()}


def images_per_second(seconds: dict[str, list[float]], images: int) -> dict[str, int]:
    return {f"{name}_images_per_s": round(images / statistics.median(times)) for name, times in seconds.items()}


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Median and range of the round-by-round ratios."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {"median": round(statistics.median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)]}
