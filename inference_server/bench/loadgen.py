"""The load generator: an asyncio HTTP client (aiohttp on uvloop) in its own process.

    python -m inference_server.bench.loadgen SPEC.json RESULT.json

SPEC holds the URL, the request bodies and a list of runs; each run is closed-loop (``concurrency``
workers, each sending its next request when the previous answer arrives) or open-loop (arrivals at
``rate`` per second on a seeded schedule, latency measured from the scheduled send time). Every run is
bounded by a request count and a duration, and starts with unmeasured warm-up requests (the open loop
sends them at once, which opens its connections); failed warm-ups are counted. RESULT holds, per run,
one record per request (input index, HTTP status, latency, predicted label, the server's own
latency_ms), the client's CPU time, so the report can say how much of the shared CPU the client itself
took, and for sentiment-server the change in its /metrics histograms over the measured window.

Why aiohttp rather than httpx: the client shares the machine's two cores with the server under test,
so its cost per request is taken from the server. Measured here against a trivial ASGI app, httpx's
AsyncClient spent 3–5.5 ms of CPU per request, aiohttp 0.3–0.4 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference_server.bench.schedule import arrival_offsets
from inference_server.bench.stats import histogram_totals

REQUEST_TIMEOUT_S = 120.0
OPEN_LOOP_MAX_CONNECTIONS = 256
# Connections the open loop opens (with one request each) before its measured window, so that the first
# scheduled sends do not pay for TCP connects that a steady stream of users would not.
OPEN_LOOP_WARM_CONNECTIONS = 16
WARMUP_MAX_S = 5.0
JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class RunResult:
    name: str
    records: list[tuple[int, int, float, str | None, float | None]] = field(default_factory=list)
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    max_send_lag_ms: float = 0.0  # open loop: how late the client itself sent (its own share of latency)
    first_error: str | None = None
    warmup_errors: int = 0  # failed warm-up requests (not measured, but a server that fails them is suspect)
    # What the server's /metrics histograms gained over the measured window, by the spec's key: (sum,
    # count). ``batch``: texts and forward passes; ``forward``: seconds and passes on the forward thread;
    # ``request``: seconds and /infer answers with status 2xx, from the metrics middleware seeing the
    # request to the response sent (serialisation and the send included). Empty for the naive app.
    histograms: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parse(body: bytes) -> tuple[str | None, float | None]:
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    label = data.get("label")
    server_ms = data.get("latency_ms")
    return (
        str(label) if label is not None else None,
        float(server_ms) if isinstance(server_ms, int | float) else None,
    )


async def _send(client: Any, url: str, body: bytes, result: RunResult, index: int, origin: float) -> None:
    """One request; the latency runs from ``origin`` (the send time, or the scheduled send time)."""
    try:
        async with client.post(url, data=body, headers=JSON_HEADERS) as response:
            status, content = response.status, await response.read()
    except Exception as exc:  # connection refused/reset, timeout: an error of this run, not of the client
        status, content = 0, b""
        result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
    latency = time.perf_counter() - origin
    label, server_ms = _parse(content) if status == 200 else (None, None)
    if status != 200 and result.first_error is None:
        result.first_error = f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}"
    result.records.append((index, status, latency, label, server_ms))


@dataclass(frozen=True)
class MetricsSpec:
    """Where the server's /metrics is, and which histograms to read: a key (``batch``, ``forward``,
    ``request``) → (histogram name, labels a series must carry to count)."""

    url: str
    histograms: dict[str, tuple[str, dict[str, str]]]


Totals = dict[str, tuple[float, float]]


async def _totals(client: Any, metrics: MetricsSpec | None) -> Totals | None:
    """(sum, count) now of each histogram of ``metrics``, or None when the server has none (the naive
    app) or the scrape failed."""
    if metrics is None:
        return None
    try:
        async with client.get(metrics.url) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except Exception:  # a failed scrape only loses the server-side columns, never the run
        return None
    return {key: histogram_totals(text, name, labels) for key, (name, labels) in metrics.histograms.items()}


def histogram_deltas(before: Totals | None, after: Totals | None) -> dict[str, tuple[float, float]]:
    """(sum, count) added to each histogram between two scrapes; empty when either scrape is missing."""
    if before is None or after is None:
        return {}
    return {
        key: (after[key][0] - before[key][0], after[key][1] - before[key][1])
        for key in after
        if key in before
    }


async def _warm(
    client: Any,
    url: str,
    bodies: list[bytes],
    result: RunResult,
    *,
    requests: int,
    workers: int,
    max_s: float,
) -> None:
    """Unmeasured requests (``workers`` at once, bounded in time too: a server that crawls must not turn
    the warm-up into the longest phase); failures are counted on ``result``."""
    scratch = RunResult("warmup")
    pending = iter(range(requests))
    deadline = time.perf_counter() + max_s

    async def warm() -> None:
        for i in pending:
            if time.perf_counter() >= deadline:
                return
            await _send(client, url, bodies[i % len(bodies)], scratch, i, time.perf_counter())

    await asyncio.gather(*(warm() for _ in range(workers)))
    result.warmup_errors = sum(1 for r in scratch.records if r[1] != 200)
    if result.warmup_errors:
        result.first_error = f"warm-up: {scratch.first_error}"


async def closed_loop(
    client: Any,
    url: str,
    bodies: list[bytes],
    *,
    name: str,
    concurrency: int,
    max_requests: int,
    duration_s: float,
    warmup: int,
    metrics: MetricsSpec | None = None,
) -> RunResult:
    result = RunResult(name)
    if warmup:
        await _warm(
            client,
            url,
            bodies,
            result,
            requests=warmup,
            workers=concurrency,
            max_s=min(duration_s, WARMUP_MAX_S),
        )
    before = await _totals(client, metrics)
    counter = itertools.count()
    start = time.perf_counter()
    deadline = start + duration_s
    cpu0 = _cpu_s()

    async def worker() -> None:
        while True:
            k = next(counter)
            if k >= max_requests or time.perf_counter() >= deadline:
                return
            index = k % len(bodies)
            await _send(client, url, bodies[index], result, index, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    result.client_cpu_s = _cpu_s() - cpu0
    result.histograms = histogram_deltas(before, await _totals(client, metrics))
    return result


async def open_loop(
    client: Any,
    url: str,
    bodies: list[bytes],
    *,
    name: str,
    rate: float,
    max_requests: int,
    duration_s: float,
    seed: int,
    arrivals: str,
    metrics: MetricsSpec | None = None,
    warm_connections: int = OPEN_LOOP_WARM_CONNECTIONS,
) -> RunResult:
    count = max(1, min(max_requests, int(rate * duration_s)))
    offsets = arrival_offsets(rate, count, arrivals=arrivals, seed=seed)  # type: ignore[arg-type]
    result = RunResult(name)
    if warm_connections:
        # Requests sent at once open one connection each; the pool keeps them for the measured window.
        await _warm(
            client,
            url,
            bodies,
            result,
            requests=warm_connections,
            workers=warm_connections,
            max_s=WARMUP_MAX_S,
        )
    before = await _totals(client, metrics)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    cpu0 = _cpu_s()
    lag = 0.0
    for k, offset in enumerate(offsets):
        scheduled = start + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, time.perf_counter() - scheduled)
        index = k % len(bodies)
        tasks.append(asyncio.create_task(_send(client, url, bodies[index], result, index, scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - start
    result.client_cpu_s = _cpu_s() - cpu0
    result.max_send_lag_ms = lag * 1000.0
    result.histograms = histogram_deltas(before, await _totals(client, metrics))
    return result


def metrics_spec(spec: dict[str, Any]) -> MetricsSpec | None:
    """The spec's ``metrics`` entry: {"url": …, "histograms": {key: [name, {label: value}]}}."""
    raw = spec.get("metrics")
    if not raw:
        return None
    return MetricsSpec(
        raw["url"], {key: (name, dict(labels)) for key, (name, labels) in raw["histograms"].items()}
    )


async def run_spec(spec: dict[str, Any]) -> list[RunResult]:
    import aiohttp

    url: str = spec["url"]
    bodies = [json.dumps({"text": t}).encode("utf-8") for t in spec["texts"]]
    metrics = metrics_spec(spec)
    results = []
    for run in spec["runs"]:
        connections = run["concurrency"] if run["mode"] == "closed" else OPEN_LOOP_MAX_CONNECTIONS
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            if run["mode"] == "closed":
                result = await closed_loop(
                    client,
                    url,
                    bodies,
                    name=run["name"],
                    concurrency=run["concurrency"],
                    max_requests=run["max_requests"],
                    duration_s=run["duration_s"],
                    warmup=run.get("warmup", 0),
                    metrics=metrics,
                )
            else:
                result = await open_loop(
                    client,
                    url,
                    bodies,
                    name=run["name"],
                    rate=run["rate"],
                    max_requests=run["max_requests"],
                    duration_s=run["duration_s"],
                    seed=run.get("seed", 0),
                    arrivals=run.get("arrivals", "poisson"),
                    metrics=metrics,
                )
        ok = sum(1 for r in result.records if r[1] == 200)
        warm = f", {result.warmup_errors} warm-up failures" if result.warmup_errors else ""
        print(
            f"[loadgen] {result.name}: {ok}/{len(result.records)} ok in {result.elapsed_s:.1f}s{warm}",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m inference_server.bench.loadgen SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the standard loop works, at a little more client CPU
        results = asyncio.run(run_spec(spec))
    else:
        results = uvloop.run(run_spec(spec))
    Path(args[1]).write_text(json.dumps({"runs": [r.to_dict() for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
