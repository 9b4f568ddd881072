"""Token-bucket rate limits, one bucket per endpoint (the batch endpoint has its own).

The decision is a pure function of (bucket state, now); ``RateLimiter`` only keeps the state. Limits
are per server process: a replica protects itself, whatever the clients do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed


def take(
    bucket: Bucket, now: float, *, rate: float, burst: float, cost: float = 1.0
) -> tuple[Bucket, Decision]:
    """Refill at `rate` tokens/s up to `burst`, then take `cost` tokens if there are enough."""
    tokens = min(burst, bucket.tokens + max(0.0, now - bucket.updated) * rate)
    if tokens >= cost:
        return Bucket(tokens - cost, now), Decision(True, 0.0)
    return Bucket(tokens, now), Decision(False, (cost - tokens) / rate)


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds (RFC 9110); round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(seconds)))


class RateLimiter:
    """One token bucket. ``rate`` ≤ 0 disables it. Burst defaults to one second's worth (at least 1)."""

    def __init__(
        self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._bucket = Bucket(self.burst, clock())

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def try_acquire(self, cost: float = 1.0) -> Decision:
        if not self.enabled:
            return Decision(True, 0.0)
        self._bucket, decision = take(
            self._bucket, self._clock(), rate=self.rate, burst=self.burst, cost=min(cost, self.burst)
        )
        return decision
