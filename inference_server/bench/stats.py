"""Latency and throughput summaries of one load run (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


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


def summarise(
    latencies_s: Sequence[float],
    errors: int,
    elapsed_s: float,
    *,
    failed_latencies_s: Sequence[float] = (),
) -> RunSummary:
    """Throughput counts successful requests over the measured wall time; percentiles in ms.

    ``failed_latencies_s``: the latencies of failed requests (an error answer, or the client's timeout),
    counted in the percentiles and the mean but not in the throughput. The open loop passes them: a
    request that failed or timed out was still a user kept waiting, and dropping it would make an
    overloaded server's tail look shorter the more requests it fails."""
    ms = [x * 1000.0 for x in latencies_s]
    waited = ms + [x * 1000.0 for x in failed_latencies_s]
    n = len(ms)
    return RunSummary(
        requests=n,
        errors=errors,
        elapsed_s=elapsed_s,
        rps=n / elapsed_s if elapsed_s > 0 else math.nan,
        p50_ms=percentile(waited, 50),
        p95_ms=percentile(waited, 95),
        p99_ms=percentile(waited, 99),
        mean_ms=sum(waited) / len(waited) if waited else math.nan,
    )


def histogram_totals(
    exposition: str, name: str, labels: Mapping[str, str] | None = None
) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in text exposition, added over the label sets that carry
    every pair of ``labels`` (all label sets when None): e.g. the request latency of ``/infer`` answers
    with ``status_class="2xx"`` only, not of the /metrics scrapes or of failed requests."""
    wanted = dict(labels or {}).items()
    totals = {f"{name}_sum": 0.0, f"{name}_count": 0.0}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name in totals and wanted <= sample.labels.items():
                totals[sample.name] += sample.value
    return totals[f"{name}_sum"], totals[f"{name}_count"]
