"""Timing helpers of ``dfa bench``: round-robin races, medians, [min, max] spans, ratios.

Every number of the report is a ratio against a peer timed in the same process (the shared
2-core box swings absolute times up to 10×, perf-anchors §0).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def race(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
         sync: Callable[[], None] = lambda: None) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` calls of each.

    Round-robin rather than one block per callable: contention on the shared box comes in
    bursts, and interleaving spreads a burst over all peers instead of penalising one.
    Returns (seconds per call, by name) and the last return value of each.
    """
    last: dict[str, object] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            last[name] = fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            last[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times, last


def med(samples: list[float], scale: float = 1e3) -> float:
    return round(float(np.median(samples)) * scale, 3)


def span(samples: list[float], scale: float = 1e3) -> list[float]:
    return [round(min(samples) * scale, 3), round(max(samples) * scale, 3)]


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None
