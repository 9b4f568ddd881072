"""Paired rounds: the concurrency-32 ratios measured side by side, round after round.

The development machine's speed drifts by a third over minutes (a shared 2-vCPU VM: the same fp32
ceiling measured 126 and 186 sentences/s in two runs ten minutes apart), so a ratio of two figures
taken minutes apart measures the drift as much as the server. Each round here measures, back to
back on the same texts: the fp32 ceiling at its best batch size and layout (from the sweep), the fp32
server at c=32, the INT8 ceiling, the INT8 server, and the naive app. Every server stays up for all
rounds; only the one under load uses the CPUs. The targets are judged on the median over rounds of
each round's own ratio (report.py ``evaluate_targets``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PAIRED_CONCURRENCY = 32


@dataclass(frozen=True)
class PairedRound:
    length: str  # "short" | "long"
    round: int
    # req/s of each server variant at c=32, sentences/s of each ceiling (by precision); missing: not run
    server_rps: dict[str, float]
    ceiling_sps: dict[str, float]
    # CPU milliseconds the server's event-loop thread spent per request in the round (from /proc):
    # the share of the CPUs the forward passes do not get. Missing: not measured (older results).
    loop_cpu_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def round_ratios(rounds: Sequence[PairedRound], ratio: Callable[[PairedRound], float | None]) -> list[float]:
    """Each round's own ratio, where both sides were measured."""
    values = [ratio(r) for r in rounds]
    return [v for v in values if v is not None]


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def server_ratio(a: str, b: str) -> Callable[[PairedRound], float | None]:
    def ratio(r: PairedRound) -> float | None:
        x, y = r.server_rps.get(a), r.server_rps.get(b)
        return x / y if x is not None and y else None

    return ratio


def ceiling_ratio(variant: str, precision: str) -> Callable[[PairedRound], float | None]:
    def ratio(r: PairedRound) -> float | None:
        x, y = r.server_rps.get(variant), r.ceiling_sps.get(precision)
        return x / y if x is not None and y else None

    return ratio
