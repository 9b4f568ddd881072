"""Open-loop arrival schedules (pure).

An open-loop client sends at scheduled times whether or not earlier answers came back, and measures
each latency from the *scheduled* send time: a server that stalls is charged for the requests that
queued behind the stall instead of silently slowing the client down (coordinated omission).
"""

from __future__ import annotations

import random
from typing import Literal

Arrivals = Literal["poisson", "fixed"]


def arrival_offsets(rate: float, count: int, *, arrivals: Arrivals = "poisson", seed: int = 0) -> list[float]:
    """Send times in seconds after the start, ascending, for ``count`` requests at ``rate`` per second:
    exponential gaps (Poisson process, seeded) or a fixed interval. The first request goes at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    if arrivals == "fixed":
        return [i / rate for i in range(count)]
    if arrivals != "poisson":
        raise ValueError(f"arrivals must be 'poisson' or 'fixed', got {arrivals!r}")
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(count):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets
