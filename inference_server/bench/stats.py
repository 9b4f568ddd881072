"""Latency and throughput summaries of one load run (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between order statistics (numpy's default);
    NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class RunSummary:
    """One load run: successful requests only in the latencies; errors counted apart."""

    requests: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def summarise(latencies_s: Sequence[float], errors: int, elapsed_s: float) -> RunSummary:
    """Throughput counts successful requests over the measured wall time; percentiles in ms."""
    ms = [x * 1000.0 for x in latencies_s]
    n = len(ms)
    return RunSummary(
        requests=n,
        errors=errors,
        elapsed_s=elapsed_s,
        rps=n / elapsed_s if elapsed_s > 0 else math.nan,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / n if n else math.nan,
    )


def histogram_totals(exposition: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in text exposition, added over all its label sets."""
    total_sum = total_count = 0.0
    for line in exposition.splitlines():
        if line.startswith(f"{name}_sum") or line.startswith(f"{name}_count"):
            metric, _, value = line.rpartition(" ")
            base = metric.split("{", 1)[0]
            if base == f"{name}_sum":
                total_sum += float(value)
            elif base == f"{name}_count":
                total_count += float(value)
    return total_sum, total_count
