"""Paired rounds: the concurrency-32 ratios measured side by side, round after round.

The development machine's speed drifts by a third over minutes (a shared 2-vCPU VM: the same fp32
ceiling measured 126 and 186 sentences/s in two runs ten minutes apart), so a ratio of two figures
taken minutes apart measures the drift as much as the server. Each round here measures, back to
back on the same texts: the fp32 ceiling, the INT8 ceiling (each the best of a few batch sizes: the
sweep's winner and the sizes the server forms at c=32, ``ceiling_candidates``), then the fp32 server,
the INT8 server and the naive app at c=32. Every server stays up for all rounds; only the one under load
uses the CPUs. The targets are judged on the median over rounds of each round's own ratio (targets.py
``evaluate_targets``); a round where a server beats its own ceiling is flagged (``over_ceiling``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from inference_server.bench.inprocess import ONE_PASS

PAIRED_CONCURRENCY = 32
# Batch sizes a server forms at c=32 (batches of ~21 texts at c=32 in the committed run: two cohorts of
# clients alternate), measured in every round beside the sweep's winner.
SERVER_BATCH_SIZES = (16, 32)


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
    # Which batch size and layout gave each ceiling its best this round, e.g. "16, 2 slices side by side".
    ceiling_config: dict[str, str] = field(default_factory=dict)
    # Requests of each server that were not answered 200 (warm-up included): such a round is invalid for
    # every ratio that uses that server.
    errors: dict[str, int] = field(default_factory=dict)

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


def ceiling_candidates(
    one_pass: Mapping[int, float],
    sliced: Mapping[int, float],
    sliced_layout: str,
    best: tuple[int, str],
    sizes: Sequence[int] = SERVER_BATCH_SIZES,
) -> list[tuple[int, str]]:
    """(batch size, layout) pairs a round measures: the sweep's winner first, then each of ``sizes`` in
    the layout that did better at that size in the sweep (one pass where the sweep has neither)."""
    out = [best]
    for bs in sizes:
        a, b = one_pass.get(bs), sliced.get(bs)
        layout = sliced_layout if b is not None and (a is None or b > a) else ONE_PASS
        if (bs, layout) not in out:
            out.append((bs, layout))
    return out


@dataclass(frozen=True)
class OverCeiling:
    length: str
    round: int
    variant: str
    ratio: float


def over_ceiling(rounds: Sequence[PairedRound], pairs: Sequence[tuple[str, str]]) -> list[OverCeiling]:
    """Rounds where a server (variant) served more than its ceiling (precision) measured in the same
    round: a ceiling is the most the forward pass did, so such a round's ceiling measured low."""
    out = []
    for r in rounds:
        for variant, precision in pairs:
            value = ceiling_ratio(variant, precision)(r)
            if value is not None and value > 1.0:
                out.append(OverCeiling(r.length, r.round, variant, value))
    return out
