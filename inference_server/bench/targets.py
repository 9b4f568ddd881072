"""Pass / miss / not measured for each target line of one run, apart from the Markdown, so that what
counts as a verdict (and what voids one) can be read and tested on its own."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from inference_server.bench.paired import (
    PairedRound,
    ceiling_ratio,
    median_or_none,
    over_ceiling,
    round_ratios,
    server_ratio,
)
from inference_server.bench.results import LENGTHS, BenchResults, failures, invalid, precision_of

TARGET_CONCURRENCY = 32
OVERHEAD_BUDGET_MS = 2.0
CEILING_SHARE = 0.8  # the fp32 server's c=32 rate as a share of the raw forward pass's best
# The plan a measurement runs (server_bench.FULL): a run with shorter cells or fewer requests per cell is
# a smoke run whose figures no target may rest on.
MEASURED_DURATION_S = 8.0
MEASURED_MAX_REQUESTS = 3000
MEASURED_OPEN_DURATION_S = 12.0


@dataclass(frozen=True)
class Target:
    name: str
    required: str
    measured: str
    passed: bool | None  # None: could not be measured in this run
    reason: str | None = None  # why not measured, when known


def _short_plan(run: Mapping[str, Any]) -> str | None:
    """Which of the run's bounds is below a measurement's, or None."""
    short = [
        f"{label} {run[key]:g} < {least:g}"
        for key, least, label in (
            ("duration_s", MEASURED_DURATION_S, "--duration"),
            ("max_requests", MEASURED_MAX_REQUESTS, "--max-requests"),
            ("open_duration_s", MEASURED_OPEN_DURATION_S, "--open-duration"),
        )
        if isinstance(run.get(key), int | float) and run[key] < least
    ]
    return "cells shorter than a measurement's (" + ", ".join(short) + ")" if short else None


def verdicts_off(meta: Mapping[str, Any]) -> str | None:
    """Why no line of this run may pass or miss, or None: a --quick run's handful of requests per cell,
    cells cut shorter than a measurement's, a model other than the default one (the tiny test model
    above all), and a server that died under test are not measurements of anything a target is about."""
    reasons = []
    run = meta.get("run", {})
    if run.get("quick"):
        reasons.append("quick run: a handful of requests per cell")
    elif (short := _short_plan(run)) is not None:
        reasons.append(short)
    model = meta.get("model", {})
    if model.get("fallback") or "TINY" in str(model.get("kind", "")):
        reasons.append("the tiny test model, not the default model (`make model` not built)")
    elif model.get("default") is False:
        reasons.append(f"--model {model.get('name', '?')}: not the default model the targets are for")
    if meta.get("server_died"):
        reasons.append(f"a server died under test ({meta['server_died']})")
    return "; ".join(reasons) or None


# --- figures as text (the report's tables write them the same way) --------------------------------
def times(r: float, digits: int = 2) -> str:
    return "–" if math.isnan(r) else f"{r:.{digits}f}×"


def percent(r: float, digits: int = 0) -> str:
    return "–" if math.isnan(r) else f"{r * 100:.{digits}f}%"


def _beside(value: float, line: float, fmt: Callable[[float, int], str], digits: int) -> str:
    """`value` written with as many more digits as it takes not to show a miss as the line itself
    (a median of 79.6% against "≥ 80%" must not read "80%")."""
    while value < line and fmt(value, digits) == fmt(line, digits) and digits < 4:
        digits += 1
    return fmt(value, digits)


def figure(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


# --- targets --------------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def _judge(value: float, ok: bool) -> bool | None:
    return None if math.isnan(value) else ok


def _paired(
    res: BenchResults,
    length: str,
    ratio: Callable[[PairedRound], float | None],
    fmt: Callable[[float, int], str],
    line: float,
    digits: int,
) -> tuple[float, str] | None:
    """(median, text) of each paired round's own ratio for this input length; None without rounds."""
    values = round_ratios([r for r in res.paired if r.length == length], ratio)
    median = median_or_none(values)
    if median is None:
        return None
    spread = f"{fmt(min(values), digits)}–{fmt(max(values), digits)}"
    shown = _beside(median, line, fmt, digits)
    return median, f"median {shown} of {len(values)} paired rounds ({spread})"


def _invalid_cells(res: BenchResults, length: str, concurrency: int, variants: Sequence[str]) -> list[str]:
    """The cells (sweep and paired rounds) of these variants that had failures, named for the report."""
    out = []
    for v in variants:
        run = res.run(v, length, concurrency)
        if run is not None and invalid(run):
            out.append(f"{v} c={concurrency} {length} ({failures(run)})")
        if concurrency == TARGET_CONCURRENCY:
            for r in res.paired:
                if r.length == length and r.errors.get(v):
                    out.append(f"{v} in paired round {r.round + 1} ({r.errors[v]} failed)")
    return out


def _not_measured_for(invalid_cells: Sequence[str]) -> str:
    return "invalid cell: " + "; ".join(invalid_cells)


def _c32_target(
    name: str,
    required: str,
    sweep: float,
    sweep_text: str,
    paired: tuple[float, str] | None,
    ok: Callable[[float], bool],
    invalid_cells: Sequence[str] = (),
) -> Target:
    """Judged on the paired rounds' median when there are rounds (drift-free), else on the sweep cell;
    not at all when any cell it shows had failures."""
    measured = sweep_text if paired is None else f"{paired[1]}; sweep cell {sweep_text}"
    if invalid_cells:
        return Target(name, required, measured, None, _not_measured_for(invalid_cells))
    if paired is None:
        return Target(name, required, measured, _judge(sweep, ok(sweep)))
    return Target(name, required, measured, ok(paired[0]))


def _over_ceiling_text(res: BenchResults, length: str, variant: str, precision: str) -> str:
    flagged = over_ceiling([r for r in res.paired if r.length == length], [(variant, precision)])
    if not flagged:
        return ""
    rounds = ", ".join(f"{f.round + 1} ({percent(f.ratio)})" for f in flagged)
    return f"; above 100% of its ceiling in round {rounds}: that ceiling measured low"


def evaluate_targets(res: BenchResults) -> list[Target]:
    """Every target line; with ``verdicts_off`` (quick run, tiny model) none passes or misses."""
    targets = _measured_targets(res)
    off = verdicts_off(res.meta)
    if off is None:
        return targets
    return [dataclasses.replace(t, passed=None, reason=off) for t in targets]


class ServerVs(NamedTuple):
    """A c=32 target on one server's req/s over another's: ``variant`` / ``over`` ≥ ``least``."""

    name: str
    variant: str
    over: str
    least: float


# The server-over-server ratios, as the targets judge them and the paired rounds' table shows them.
FP32_VS_NAIVE = ServerVs("fp32 server vs naive", "fp32", "naive", 3.0)
INT8_VS_FP32 = ServerVs("INT8 vs fp32 server", "int8", "fp32", 1.7)


def _rps(res: BenchResults, variant: str, length: str) -> float | None:
    run = res.run(variant, length, TARGET_CONCURRENCY)
    return run.summary.rps if run else None


def _server_vs(res: BenchResults, length: str, spec: ServerVs) -> Target:
    c, a, b = TARGET_CONCURRENCY, spec.variant, spec.over
    a_rps, b_rps = _rps(res, a, length), _rps(res, b, length)
    r = _ratio(a_rps, b_rps)
    return _c32_target(
        f"{spec.name}, c={c}, {length}",
        f"≥ {spec.least:.1f}×",
        r,
        f"{_beside(r, spec.least, times, 2)} ({figure(a_rps)} vs {figure(b_rps)} req/s)",
        _paired(res, length, server_ratio(a, b), times, spec.least, 2),
        lambda x: x >= spec.least,
        _invalid_cells(res, length, c, (a, b)),
    )


def _fp32_ceiling_target(res: BenchResults, length: str) -> Target:
    c = TARGET_CONCURRENCY
    fp32_rps = _rps(res, "fp32", length)
    ceil = res.ceiling("fp32", length)
    r = _ratio(fp32_rps, ceil.best_sentences_per_s if ceil else None)
    return _c32_target(
        f"fp32 server vs raw ceiling, c={c}, {length}",
        f"≥ {percent(CEILING_SHARE)}",
        r,
        f"{_beside(r, CEILING_SHARE, percent, 0)} ({figure(fp32_rps)} vs "
        f"{figure(ceil.best_sentences_per_s if ceil else None)} sentences/s"
        f"{f', batch {ceil.best_batch_size}, {ceil.best_layout}' if ceil else ''})"
        + _over_ceiling_text(res, length, "fp32", "fp32"),
        _paired(res, length, ceiling_ratio("fp32", "fp32"), percent, CEILING_SHARE, 0),
        lambda x: x >= CEILING_SHARE,
        _invalid_cells(res, length, c, ("fp32",)),
    )


def _measured_targets(res: BenchResults) -> list[Target]:
    out: list[Target] = []
    for length in LENGTHS:
        out += [
            _server_vs(res, length, FP32_VS_NAIVE),
            _fp32_ceiling_target(res, length),
            _server_vs(res, length, INT8_VS_FP32),
        ]
    out.append(_f1_target(res))
    for length in LENGTHS:
        out.append(_overhead_target(res, length))
    return out


def _f1_target(res: BenchResults) -> Target:
    """Judged on the in-process test split (1276 rows, every one predicted once); the served answers'
    macro-F1 on the labelled short inputs is shown beside it, not judged (a smaller sample)."""
    name, required = "INT8 macro-F1 within 1 point of fp32 (test split)", "drop ≤ 1.0 point"
    q = res.quality
    served = _served_f1_text(res)
    if q is None:
        return Target(name, required, "not measured" + served, None)
    change = (q.macro_f1_int8 - q.macro_f1_fp32) * 100.0  # signed as everywhere else: − is a loss
    measured = (
        f"{change:+.2f} points ({q.macro_f1_fp32:.4f} → {q.macro_f1_int8:.4f}, {q.rows} sentences)" + served
    )
    return Target(name, required, measured, -change <= 1.0)


def _served_f1_text(res: BenchResults) -> str:
    compared = ("fp32", "int8")
    c = TARGET_CONCURRENCY
    a, b = res.served_quality("fp32", compared, c), res.served_quality("int8", compared, c)
    if a is None or b is None:
        return ""
    change = (b.macro_f1 - a.macro_f1) * 100.0
    return (
        f"; served answers at c={c} (not judged): {change:+.2f} points ({a.macro_f1:.4f} → "
        f"{b.macro_f1:.4f}, the {a.answers} labelled short inputs both servers answered there, each once)"
    )


def loadgen_floor_ms(meta: Mapping[str, Any]) -> float | None:
    """The load generator's own mean latency at c=1 against a no-op responder, measured in this run
    (server_bench.measure_loadgen_floor); None for results from before it was measured."""
    floor = meta.get("loadgen_floor") or {}
    value = floor.get("mean_ms")
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Overhead:
    """What the server adds to its forward pass at concurrency 1 (ms; NaN where not measured)."""

    judged: float  # client-observed mean − forward mean − the load generator's floor: what is judged
    by_histogram: float  # request-latency histogram mean − forward mean (misses uvicorn's share)
    by_handler: float  # the response's latency_ms mean − forward mean (misses send, log, parsing)
    client: float  # client-observed mean − forward mean (the client's own floor included)


def as_run_overhead(res: BenchResults, variant: str, length: str) -> Overhead:
    """At concurrency 1 every request had exactly one forward pass, so each mean latency minus the mean
    pass (both over the same cell, from the server's own histograms) is what the server adds; from the
    client's side, less what the client itself takes for a request to a responder that does nothing."""
    run = res.run(variant, length, 1)
    nan = math.nan
    if run is None or run.forward_mean_ms is None:
        return Overhead(nan, nan, nan, nan)
    fwd = run.forward_mean_ms

    def minus(x: float | None) -> float:
        return x - fwd if x is not None else nan

    client = minus(run.summary.mean_ms)
    floor = loadgen_floor_ms(res.meta)
    judged = client - floor if floor is not None else nan
    return Overhead(judged, minus(run.request_mean_ms), minus(run.server_mean_ms), client)


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.2f} ms"


def _overhead_target(res: BenchResults, length: str) -> Target:
    """Judged on what a caller waits for beyond the pass: the client-observed mean over the c=1 cell,
    minus the server's mean forward pass over the same cell, minus the load generator's own mean against
    a no-op responder (measured in the same run). So uvicorn's read, parse and dispatch, every
    middleware and the log line count; the request-latency histogram's share is shown as a breakdown."""
    name = f"server overhead at c=1 over the forward pass, fp32, {length}"
    budget = f"≤ {OVERHEAD_BUDGET_MS:.0f} ms"
    run = res.run("fp32", length, 1)
    if run is None:
        return Target(name, budget, "not measured", None)
    o = as_run_overhead(res, "fp32", length)
    floor = loadgen_floor_ms(res.meta)
    breakdown = f"of which request-latency histogram − forward {_ms(o.by_histogram)}"
    if invalid(run):
        reason = _not_measured_for([f"fp32 c=1 {length} ({failures(run)})"])
        return Target(name, budget, f"client-observed − forward {_ms(o.client)}", None, reason)
    if floor is None:
        measured = f"client-observed − forward {_ms(o.client)} (client's floor left in); {breakdown}"
        reason = "the load generator's own floor was not measured in this run (results from before it was)"
        return Target(name, budget, measured, None, reason)
    if math.isnan(o.judged):
        return Target(name, budget, "–", None, "this run read no forward-pass histogram for the cell")
    measured = (
        f"{o.judged:+.2f} ms = client-observed mean − forward pass as run (server mean) − load generator's "
        f"floor {floor:.2f} ms; {breakdown}"
    )
    return Target(name, budget, measured, o.judged <= OVERHEAD_BUDGET_MS)


def overhead_ms(res: BenchResults, variant: str, length: str) -> float:
    """Client-observed p50 at concurrency 1 minus the bare single-sentence forward p50 (same inputs)."""
    run = res.run(variant, length, 1)
    ceil = res.ceiling(precision_of(variant), length)
    if run is None or ceil is None:
        return math.nan
    return run.summary.p50_ms - ceil.batch1_p50_ms
