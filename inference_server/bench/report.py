"""Targets (pass/miss) and the Markdown report of one benchmark run (pure: data in, text out)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference_server.bench.inprocess import Ceiling, Quality
from inference_server.bench.paired import (
    PairedRound,
    ceiling_ratio,
    median_or_none,
    round_ratios,
    server_ratio,
)
from inference_server.bench.stats import RunSummary

VARIANTS = ("naive", "fp32", "int8", "fp32-1t", "fp32-passive")
VARIANT_TITLES = {
    "naive": "(a) naive `pipeline` app",
    "fp32": "(c) sentiment-server fp32",
    "int8": "(d) sentiment-server INT8",
    # Optional (--variants): the same server with one intra-op thread, or with OpenMP's idle threads
    # sleeping instead of spinning — for the question of how torch's threads share 2 busy cores.
    "fp32-1t": "(c1) sentiment-server fp32, TORCH_THREADS=1",
    "fp32-passive": "(c2) sentiment-server fp32, OMP_WAIT_POLICY=PASSIVE",
}


def precision_of(variant: str) -> str:
    return "int8" if variant.startswith("int8") else "fp32"


LENGTHS = ("short", "long")
TARGET_CONCURRENCY = 32
OVERHEAD_BUDGET_MS = 2.0
FINDINGS_START = "<!-- findings:start (hand-written; kept when the report is regenerated) -->"
FINDINGS_END = "<!-- findings:end -->"
SECTIONS = (
    "## Targets",
    "## Setup",
    "## Closed loop: throughput and latency",
    "## Open loop at 75% of maximum throughput",
    "## Raw model ceiling (b)",
    "## Per-request overhead at concurrency 1",
    "## Accuracy: fp32 vs INT8",
    "## Findings",
    "## Reproduce",
)


@dataclass(frozen=True)
class ClosedRun:
    variant: str
    length: str
    concurrency: int
    summary: RunSummary
    server_p50_ms: float | None  # the server's own latency_ms (middleware to response), median
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core)
    agreement: float | None  # share of answers matching the in-process prediction of the same model
    mean_batch: float | None = None  # texts per forward pass in the server during the run (its /metrics)
    server_mean_ms: float | None = None  # the server's own latency_ms, mean
    # Mean forward pass as the server ran it (its sentiment_forward_latency_seconds over the run); at
    # concurrency 1 every request had exactly one pass, so latency minus this is what the server adds.
    forward_mean_ms: float | None = None


@dataclass(frozen=True)
class OpenRun:
    variant: str
    length: str
    rate: float
    summary: RunSummary
    max_send_lag_ms: float
    client_cpu_share: float
    mean_batch: float | None = None


@dataclass
class BenchResults:
    meta: dict[str, Any]
    closed: list[ClosedRun] = field(default_factory=list)
    open: list[OpenRun] = field(default_factory=list)
    ceilings: list[Ceiling] = field(default_factory=list)
    quality: Quality | None = None
    notes: list[str] = field(default_factory=list)
    paired: list[PairedRound] = field(default_factory=list)

    def run(self, variant: str, length: str, concurrency: int) -> ClosedRun | None:
        for r in self.closed:
            if (r.variant, r.length, r.concurrency) == (variant, length, concurrency):
                return r
        return None

    def ceiling(self, precision: str, length: str) -> Ceiling | None:
        for c in self.ceilings:
            if (c.precision, c.length) == (precision, length):
                return c
        return None

    def max_rps(self, variant: str, length: str) -> float:
        rates = [r.summary.rps for r in self.closed if (r.variant, r.length) == (variant, length)]
        return max(rates) if rates else math.nan

    def to_dict(self) -> dict[str, Any]:
        def closed(r: ClosedRun) -> dict[str, Any]:
            return {**r.__dict__, "summary": r.summary.to_dict()}

        def opened(r: OpenRun) -> dict[str, Any]:
            return {**r.__dict__, "summary": r.summary.to_dict()}

        return {
            "meta": self.meta,
            "closed": [closed(r) for r in self.closed],
            "open": [opened(r) for r in self.open],
            "ceilings": [c.to_dict() for c in self.ceilings],
            "quality": self.quality.to_dict() if self.quality else None,
            "notes": self.notes,
            "paired": [r.to_dict() for r in self.paired],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResults:
        """Back from ``to_dict`` (the JSON next to the report), to re-render a report without re-running."""

        def closed(d: dict[str, Any]) -> ClosedRun:
            return ClosedRun(**{**d, "summary": RunSummary.from_dict(d["summary"])})

        def opened(d: dict[str, Any]) -> OpenRun:
            return OpenRun(**{**d, "summary": RunSummary.from_dict(d["summary"])})

        def ceiling(d: dict[str, Any]) -> Ceiling:
            def by_size(rates: dict[str, float]) -> dict[int, float]:
                return {int(k): float(v) for k, v in rates.items()}  # JSON keys are strings

            return Ceiling(
                **{
                    **d,
                    "sentences_per_s": by_size(d["sentences_per_s"]),
                    "sliced_sentences_per_s": by_size(d.get("sliced_sentences_per_s", {})),
                }
            )

        quality = data.get("quality")
        return cls(
            meta=data["meta"],
            closed=[closed(d) for d in data["closed"]],
            open=[opened(d) for d in data["open"]],
            ceilings=[ceiling(d) for d in data["ceilings"]],
            quality=Quality(**quality) if quality else None,
            notes=list(data.get("notes", [])),
            paired=[PairedRound(**d) for d in data.get("paired", [])],
        )


@dataclass(frozen=True)
class Target:
    name: str
    required: str
    measured: str
    passed: bool | None  # None: could not be measured in this run


# --- targets --------------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def _times(r: float) -> str:
    return "–" if math.isnan(r) else f"{r:.2f}×"


def _percent(r: float) -> str:
    return "–" if math.isnan(r) else f"{r * 100:.0f}%"


def _judge(value: float, ok: bool) -> bool | None:
    return None if math.isnan(value) else ok


def _paired(
    res: BenchResults, length: str, ratio: Callable[[PairedRound], float | None], fmt: Callable[[float], str]
) -> tuple[float, str] | None:
    """(median, text) of each paired round's own ratio for this input length; None without rounds."""
    values = round_ratios([r for r in res.paired if r.length == length], ratio)
    median = median_or_none(values)
    if median is None:
        return None
    spread = f"{fmt(min(values))}–{fmt(max(values))}"
    return median, f"median {fmt(median)} of {len(values)} paired rounds ({spread})"


def _c32_target(
    name: str,
    required: str,
    sweep: float,
    sweep_text: str,
    paired: tuple[float, str] | None,
    ok: Callable[[float], bool],
) -> Target:
    """Judged on the paired rounds' median when there are rounds (drift-free), else on the sweep cell."""
    if paired is None:
        return Target(name, required, sweep_text, _judge(sweep, ok(sweep)))
    median, text = paired
    return Target(name, required, f"{text}; sweep cell {sweep_text}", ok(median))


def evaluate_targets(res: BenchResults) -> list[Target]:
    out: list[Target] = []
    c = TARGET_CONCURRENCY
    for length in LENGTHS:
        fp32 = res.run("fp32", length, c)
        naive = res.run("naive", length, c)
        int8 = res.run("int8", length, c)
        ceil = res.ceiling("fp32", length)
        fp32_rps = fp32.summary.rps if fp32 else None
        r = _ratio(fp32_rps, naive.summary.rps if naive else None)
        out.append(
            _c32_target(
                f"fp32 server vs naive, c={c}, {length}",
                "≥ 3.0×",
                r,
                f"{_times(r)} ({_f(fp32_rps)} vs {_f(naive.summary.rps if naive else None)} req/s)",
                _paired(res, length, server_ratio("fp32", "naive"), _times),
                lambda x: x >= 3.0,
            )
        )
        r = _ratio(fp32_rps, ceil.best_sentences_per_s if ceil else None)
        out.append(
            _c32_target(
                f"fp32 server vs raw ceiling, c={c}, {length}",
                "≥ 80%",
                r,
                f"{_percent(r)} ({_f(fp32_rps)} vs "
                f"{_f(ceil.best_sentences_per_s if ceil else None)} sentences/s"
                f"{f', batch {ceil.best_batch_size}, {ceil.best_layout}' if ceil else ''})",
                _paired(res, length, ceiling_ratio("fp32", "fp32"), _percent),
                lambda x: x >= 0.8,
            )
        )
        r = _ratio(int8.summary.rps if int8 else None, fp32_rps)
        out.append(
            _c32_target(
                f"INT8 vs fp32 server, c={c}, {length}",
                "≥ 1.7×",
                r,
                f"{_times(r)} ({_f(int8.summary.rps if int8 else None)} vs {_f(fp32_rps)} req/s)",
                _paired(res, length, server_ratio("int8", "fp32"), _times),
                lambda x: x >= 1.7,
            )
        )
    q = res.quality
    if q is not None:
        change = (q.macro_f1_int8 - q.macro_f1_fp32) * 100.0  # signed as everywhere else: − is a loss
        out.append(
            Target(
                "INT8 macro-F1 within 1 point of fp32 (test split)",
                "drop ≤ 1.0 point",
                f"{change:+.2f} points ({q.macro_f1_fp32:.4f} → {q.macro_f1_int8:.4f}, {q.rows} sentences)",
                -change <= 1.0,
            )
        )
    else:
        out.append(
            Target(
                "INT8 macro-F1 within 1 point of fp32 (test split)", "drop ≤ 1.0 point", "not measured", None
            )
        )
    for length in LENGTHS:
        out.append(_overhead_target(res, length))
    return out


def _overhead_target(res: BenchResults, length: str) -> Target:
    """Judged on what the server adds to its own forward pass (mean latency_ms minus mean forward pass
    on its forward thread, same requests); the client-observed figure beside it adds HTTP on loopback and
    the client. Runs that did not record the server's forward time fall back to the bare in-process
    forward p50, which a separate process measured at another moment (noisier: it can even go negative)."""
    name = f"server overhead at c=1 over the forward pass, fp32, {length}"
    budget = f"≤ {OVERHEAD_BUDGET_MS:.0f} ms"
    server_side, client = as_run_overhead_ms(res, "fp32", length)
    if not math.isnan(server_side):
        measured = (
            f"{server_side:+.2f} ms server-side, {client:+.2f} ms client-observed (means, forward as run)"
        )
        return Target(name, budget, measured, server_side <= OVERHEAD_BUDGET_MS)
    overhead = overhead_ms(res, "fp32", length)
    if math.isnan(overhead):
        return Target(name, budget, "not measured", None)
    measured = f"{overhead:+.2f} ms (client-observed p50 over the bare in-process forward p50)"
    return Target(name, budget, measured, _judge(overhead, overhead <= OVERHEAD_BUDGET_MS))


def overhead_ms(res: BenchResults, variant: str, length: str) -> float:
    """Client-observed p50 at concurrency 1 minus the bare single-sentence forward p50 (same inputs)."""
    run = res.run(variant, length, 1)
    ceil = res.ceiling(precision_of(variant), length)
    if run is None or ceil is None:
        return math.nan
    return run.summary.p50_ms - ceil.batch1_p50_ms


def as_run_overhead_ms(res: BenchResults, variant: str, length: str) -> tuple[float, float]:
    """(server-side, client-observed) mean latency at concurrency 1 minus the mean forward pass as the
    server ran it; NaN where the server reported no forward time or latency."""
    run = res.run(variant, length, 1)
    if run is None or run.forward_mean_ms is None:
        return math.nan, math.nan
    server = run.server_mean_ms - run.forward_mean_ms if run.server_mean_ms is not None else math.nan
    return server, run.summary.mean_ms - run.forward_mean_ms


# --- rendering ------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _verdict(passed: bool | None) -> str:
    return {True: "**pass**", False: "**MISS**", None: "not measured"}[passed]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _targets_section(res: BenchResults) -> list[str]:
    targets = evaluate_targets(res)
    rows = [[t.name, t.required, t.measured, _verdict(t.passed)] for t in targets]
    missed = sum(1 for t in targets if t.passed is False)
    lines = ["## Targets", ""]
    lines += _table(["target", "required", "measured", "verdict"], rows)
    lines += [
        "",
        f"{len(targets) - missed} of {len(targets)} lines pass"
        + (f"; {missed} missed — see Findings." if missed else "."),
    ]
    return lines


def _setup_section(res: BenchResults) -> list[str]:
    m = res.meta
    machine = m.get("machine", {})
    model = m.get("model", {})
    inputs = m.get("inputs", {})
    run = m.get("run", {})
    lines = ["## Setup", ""]
    lines += [
        f"- Date: {m.get('date', '?')} (run took {_f(m.get('wall_s'), 0)} s)",
        f"- Machine: {machine.get('cpu_model', '?')}, {machine.get('cpus', '?')} CPUs usable "
        f"({machine.get('cpu_limit', 'no cgroup CPU quota')}), {machine.get('memory', '?')}; "
        f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}, "
        f"transformers {machine.get('transformers', '?')}, tokenizers {machine.get('tokenizers', '?')}, "
        f"uvicorn {machine.get('uvicorn', '?')}, aiohttp {machine.get('aiohttp', '?')}, "
        f"onnxruntime {machine.get('onnxruntime', '?')}",
        f"- INT8 (ceiling and (d)): {int8_description(m)} — the backend the server serves by default "
        "under `enable_quantized_model` (`INT8_BACKEND`); ONNX Runtime's session uses the same intra-op "
        "thread count, 1 inter-op thread, and no spinning idle threads.",
        f"- Threads: sentiment-server and the in-process ceiling use {machine.get('torch_threads', '?')} "
        "torch intra-op threads (from the CPU quota/affinity, `configure_torch_threads`), 1 inter-op thread; "
        "both servers run a lone request as one pass on all of them and a batch under load as slices "
        "side by side, one per thread (`FORWARD_WORKERS` auto; ONNX Runtime through one session per thread "
        "count); the naive app leaves torch's defaults "
        f"({machine.get('torch_default_threads', '?')} intra-op threads per call) and runs each request in "
        "Starlette's thread pool (up to 40 at once). `sentiment-server` and the in-process ceiling run "
        "libgomp with `OMP_WAIT_POLICY=PASSIVE` (the server sets it before torch loads, "
        "`inference_server/main.py`), because spinning idle OpenMP threads make a forward pass collapse "
        "whenever anything else runs (see Findings); the naive app keeps libgomp's default.",
        f"- Load average (1/5/15 min): before {m.get('load_before', '?')}, after {m.get('load_after', '?')}"
        f"; per variant: {m.get('load_per_variant', '?')}",
        f"- Model: `{model.get('name', '?')}` ({model.get('kind', '?')}), labels {model.get('labels', '?')}",
        f"- Inputs: {inputs.get('short_n', '?')} short texts (real test sentences, "
        f"{_f(inputs.get('short_mean_tokens'))} tokens on average, {inputs.get('short_range', '?')}) and "
        f"{inputs.get('long_n', '?')} long texts (consecutive test sentences joined, "
        f"{_f(inputs.get('long_mean_tokens'))} tokens on average, {inputs.get('long_range', '?')}); "
        "every variant gets the same texts in the same order.",
        '- Transport: HTTP/1.1 keep-alive over loopback (127.0.0.1), JSON `{"text": …}` to `POST /infer`; '
        "each server in its own process (uvicorn, one worker), started fresh and run one at a time.",
        f"- Load generator: aiohttp in a separate process ({run.get('loop', '?')} event loop). "
        "**It shares the same CPUs with the server under test** (there is no other core to put it on); "
        "its own CPU use is in the tables (client CPU, 1.0 = one core) and it is the same code for "
        "every variant.",
        f"- Closed loop: per cell up to {run.get('max_requests', '?')} requests or "
        f"{run.get('duration_s', '?')} s, whichever comes first, after {run.get('warmup', '?')} discarded "
        "warm-up requests (at most 5 s); concurrency = number of client workers with one request in "
        "flight each.",
        f"- Open loop: {run.get('arrivals', '?')} arrivals at 75% of the variant's best closed-loop "
        f"throughput for {run.get('open_duration_s', '?')} s; latency is measured from the scheduled send "
        "time (no coordinated omission).",
        f"- Server settings: defaults (MAX_BATCH_SIZE {run.get('max_batch_size', '?')}, BATCH_WAIT_MS "
        f"{run.get('batch_wait_ms', '?')}, MAX_BATCH_TOKENS {run.get('max_batch_tokens', '?')}, one JSON log "
        "line per request to a file), no calibration file, no OTLP endpoint.",
    ]
    return lines


def _closed_section(res: BenchResults, concurrencies: Sequence[int]) -> list[str]:
    lines = [
        "## Closed loop: throughput and latency",
        "",
        "Latencies are client-observed. *Server-side p50* is the `latency_ms` the server reports; "
        "*mean batch* is texts per forward pass during the cell, from the server's "
        "`sentiment_batch_size` histogram; "
        "*same label* compares each answer with the in-process prediction of the same weights.",
        "",
    ]
    for length in LENGTHS:
        ceil = res.ceiling("fp32", length)
        ceil8 = res.ceiling("int8", length)
        lines += [f"### {length.capitalize()} inputs", ""]
        rows = []
        for c in concurrencies:
            for v in VARIANTS:
                r = res.run(v, length, c)
                if r is None:
                    continue
                s = r.summary
                rows.append(
                    [
                        str(c),
                        VARIANT_TITLES[v],
                        _f(s.rps),
                        _f(s.p50_ms),
                        _f(s.p95_ms),
                        _f(s.p99_ms),
                        f"{s.requests}" + (f" ({s.errors} errors)" if s.errors else ""),
                        _f(r.server_p50_ms),
                        _f(r.mean_batch),
                        _f(r.client_cpu_share, 2),
                        "–" if r.agreement is None else f"{r.agreement * 100:.1f}%",
                    ]
                )
        lines += _table(
            [
                "concurrency",
                "variant",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "requests",
                "server-side p50 ms",
                "mean batch",
                "client CPU",
                "same label as in-process",
            ],
            rows,
        )
        lines += [
            "",
            f"Ceiling (b) for comparison: fp32 {_f(ceil.best_sentences_per_s if ceil else None)} "
            f"sentences/s (batch {ceil.best_batch_size if ceil else '–'}, "
            f"{ceil.best_layout if ceil else '–'}), INT8 "
            f"{_f(ceil8.best_sentences_per_s if ceil8 else None)} sentences/s "
            f"(batch {ceil8.best_batch_size if ceil8 else '–'}).",
            "",
        ]
    return lines


def _open_section(res: BenchResults) -> list[str]:
    rows = []
    for length in LENGTHS:
        for v in VARIANTS:
            for r in res.open:
                if (r.variant, r.length) != (v, length):
                    continue
                s = r.summary
                rows.append(
                    [
                        length,
                        VARIANT_TITLES[v],
                        _f(r.rate),
                        _f(s.rps),
                        _f(s.p50_ms),
                        _f(s.p95_ms),
                        _f(s.p99_ms),
                        f"{s.requests}" + (f" ({s.errors} errors)" if s.errors else ""),
                        _f(r.max_send_lag_ms),
                        _f(r.mean_batch),
                        _f(r.client_cpu_share, 2),
                    ]
                )
    lines = ["## Open loop at 75% of maximum throughput", ""]
    lines += _table(
        [
            "inputs",
            "variant",
            "offered req/s",
            "achieved req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "requests",
            "max client send lag ms",
            "mean batch",
            "client CPU",
        ],
        rows,
    )
    return [*lines, ""]


def _paired_section(res: BenchResults) -> list[str]:
    if not res.paired:
        return []

    def ratio(fn: Callable[[PairedRound], float | None], r: PairedRound, fmt: Callable[[float], str]) -> str:
        value = fn(r)
        return "–" if value is None else fmt(value)

    rows = [
        [
            r.length,
            str(r.round + 1),
            _f(r.server_rps.get("naive")),
            _f(r.server_rps.get("fp32")),
            _f(r.server_rps.get("int8")),
            _f(r.ceiling_sps.get("fp32")),
            _f(r.ceiling_sps.get("int8")),
            ratio(server_ratio("fp32", "naive"), r, _times),
            ratio(ceiling_ratio("fp32", "fp32"), r, _percent),
            ratio(server_ratio("int8", "fp32"), r, _times),
            ratio(ceiling_ratio("int8", "int8"), r, _percent),
            _f(r.loop_cpu_ms.get("fp32"), 2),
            _f(r.loop_cpu_ms.get("int8"), 2),
        ]
        for r in res.paired
    ]
    lines = [
        f"## Paired rounds at c={TARGET_CONCURRENCY}",
        "",
        "This machine's speed drifts by a third within minutes, so the c=32 ratios are also measured "
        "back to back: every server stays up, and each round measures the fp32 and INT8 ceilings at "
        "their best batch size and layout (from the sweep below) and then each server for a few seconds "
        "at c=32, on the same texts. The Targets use the median of the rounds' own ratios. "
        "*loop ms/req*: CPU milliseconds the server's event-loop thread spent per request in the round "
        "(from `/proc`), which the forward passes do not get.",
        "",
    ]
    lines += _table(
        [
            "inputs",
            "round",
            "naive req/s",
            "fp32 req/s",
            "INT8 req/s",
            "fp32 ceiling",
            "INT8 ceiling",
            "fp32 / naive",
            "fp32 / ceiling",
            "INT8 / fp32",
            "INT8 / its ceiling",
            "fp32 loop ms/req",
            "INT8 loop ms/req",
        ],
        rows,
    )
    return [*lines, ""]


def _ceiling_section(res: BenchResults) -> list[str]:
    sizes = sorted({bs for c in res.ceilings for bs in c.sentences_per_s})
    rows = []
    for c in res.ceilings:
        sliced = f"{c.slices} slices side by side"
        layouts = (("one pass", c.sentences_per_s), (sliced, c.sliced_sentences_per_s))
        for layout, rates in layouts:
            if not rates:
                continue
            rows.append(
                [
                    c.precision,
                    c.length,
                    layout,
                    *[_f(rates.get(bs)) for bs in sizes],
                    f"{c.best_batch_size}, {c.best_layout}" if layout == "one pass" else "",
                    _f(c.batch1_p50_ms, 2) if layout == "one pass" else "",
                    _f(c.batch1_p95_ms, 2) if layout == "one pass" else "",
                ]
            )
    lines = [
        "## Raw model ceiling (b)",
        "",
        "In-process `forward_ids` (the server's own forward call) on the same texts, pre-tokenised, "
        "consecutive batches padded to their longest text; sentences/s by batch size. *One pass*: each "
        "batch is one forward call on all the threads. *N slices side by side*: each batch is cut into "
        "length-ordered slices that run at once, one per thread, each on a single torch thread — how the "
        "server runs a batch under load by default (`serving/batching.py`, `FORWARD_WORKERS`). "
        "The ceiling is the best of both.",
        "",
    ]
    lines += _table(
        [
            "precision",
            "inputs",
            "layout",
            *[f"bs {bs}" for bs in sizes],
            "best",
            "single p50 ms",
            "single p95 ms",
        ],
        rows,
    )
    return [*lines, ""]


def _overhead_section(res: BenchResults) -> list[str]:
    rows = []
    for v in VARIANTS:
        for length in LENGTHS:
            run = res.run(v, length, 1)
            ceil = res.ceiling(precision_of(v), length)
            if run is None or ceil is None:
                continue
            server_side, client = as_run_overhead_ms(res, v, length)
            rows.append(
                [
                    VARIANT_TITLES[v],
                    length,
                    _f(ceil.batch1_p50_ms, 2),
                    _f(run.summary.p50_ms, 2),
                    _f(overhead_ms(res, v, length), 2),
                    _f(run.forward_mean_ms, 2),
                    _f(run.server_mean_ms, 2),
                    _f(run.summary.mean_ms, 2),
                    _f(server_side, 2),
                    _f(client, 2),
                ]
            )
    lines = [
        "## Per-request overhead at concurrency 1",
        "",
        "What the server adds is measured against the forward pass *as the server ran it*: every server "
        "times each pass on its forward thread (`sentiment_forward_latency_seconds`), and at concurrency 1 "
        "each request has exactly one pass, so *server-side* = mean `latency_ms` (first middleware to "
        "response, excluding the socket and uvicorn's parsing) minus the mean pass, and *client-observed* "
        "= mean client latency (adds HTTP on loopback and the client itself) minus the mean pass. The "
        "older comparison with the bare in-process `forward_ids` p50 (fp32, or INT8 for (d)) is kept for "
        "the naive app, which reports no forward time; it mixes in whatever else ran when each was measured.",
        "",
    ]
    lines += _table(
        [
            "variant",
            "inputs",
            "bare forward p50 ms",
            "HTTP p50 ms",
            "HTTP p50 − bare ms",
            "forward as run, mean ms",
            "server latency mean ms",
            "HTTP mean ms",
            "overhead server-side ms",
            "overhead client-observed ms",
        ],
        rows,
    )
    return [*lines, ""]


def int8_description(meta: dict[str, Any]) -> str:
    """What (d) and the INT8 ceiling ran: runs before the ONNX Runtime backend recorded none (torch)."""
    if meta.get("int8_backend", "torch") == "onnxruntime":
        return "INT8 (ONNX Runtime: fused encoder, dynamic INT8)"
    return "INT8 (torch dynamic, Linear layers)"


def _quality_section(res: BenchResults) -> list[str]:
    q = res.quality
    lines = ["## Accuracy: fp32 vs INT8", ""]
    if q is None:
        return [*lines, "Not measured in this run.", ""]
    lines += _table(
        ["precision", "macro-F1", "accuracy"],
        [
            ["fp32", f"{q.macro_f1_fp32:.4f}", f"{q.accuracy_fp32:.4f}"],
            [int8_description(res.meta), f"{q.macro_f1_int8:.4f}", f"{q.accuracy_int8:.4f}"],
        ],
    )
    lines += [
        "",
        f"{q.rows} test-split sentences, predicted in-process through the runtime "
        "(`load_model(quantized=…)` + `predict_logits`, the same quantization the server applies); "
        f"fp32 and INT8 agree on {q.agreement * 100:.1f}% of them. The closed-loop tables also check "
        "that every server answer matches the in-process label for the same text.",
        "",
    ]
    return lines


def _findings_section(previous: str | None) -> list[str]:
    kept = extract_findings(previous) if previous else None
    body = kept if kept is not None else "_No findings written yet for this run._"
    return ["## Findings", "", FINDINGS_START, body, FINDINGS_END, ""]


def extract_findings(previous: str) -> str | None:
    match = re.search(re.escape(FINDINGS_START) + r"\n(.*?)\n?" + re.escape(FINDINGS_END), previous, re.S)
    return match.group(1).strip("\n") if match else None


def render_report(res: BenchResults, *, concurrencies: Sequence[int], previous: str | None = None) -> str:
    """The whole report; ``previous`` (the old file) supplies the hand-written Findings to keep."""
    lines = ["# Server benchmark", ""]
    for note in res.notes:
        lines += [f"> **{note}**", ""]
    lines += [
        f"Generated by `{res.meta.get('command', '?')}` on {res.meta.get('date', '?')}. "
        "Raw figures: the JSON file next to this report.",
        "",
    ]
    lines += [*_targets_section(res), ""]
    lines += [*_setup_section(res), ""]
    lines += _closed_section(res, concurrencies)
    lines += _open_section(res)
    lines += _paired_section(res)
    lines += _ceiling_section(res)
    lines += _overhead_section(res)
    lines += _quality_section(res)
    lines += _findings_section(previous)
    lines += [
        "## Reproduce",
        "",
        "```",
        "make bench-server",
        f"# = {res.meta.get('command', '?')}",
        "```",
        "",
        "`--quick` runs a few requests per cell (the smoke test's mode: figures meaningless).",
        "",
    ]
    return "\n".join(lines)
