"""`make bench-server`: the naive baseline, the raw forward pass, and this server (fp32, INT8), side by side.

    python -m inference_server.bench.server_bench --report docs/reports/server-benchmark.md [--quick]

Steps: pick the inputs from the test split → in-process ceiling, bare forward latency and fp32/INT8
macro-F1 → the load generator's own floor (c=1 against a no-op responder, noop_server.py) → for each
server variant, start it on loopback with an explicit environment (servers.py), drive it with the load
generator (its own process) closed-loop at each concurrency and open-loop at 75% of its best
throughput, stop it → paired rounds at c=32 → write the Markdown report and a JSON file of raw figures
next to it. Throughout, the CPU that other processes take is sampled (machine.py). Targets missed, and
cells whose requests failed, are reported, not fatal: the exit code is 0 for a completed run, 1 when a
server or the load generator failed (a server that died under test is named, with the cell and its exit
code, in a report that draws no verdicts; a server that never started leaves the old report alone), 2
for bad arguments (a report whose hand-written Findings would be lost counts as one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from inference_server.bench.inprocess import Ceiling
from inference_server.bench.inputs import InputSet, join_long, joined_text, select_short
from inference_server.bench.machine import CpuMonitor
from inference_server.bench.paired import PAIRED_CONCURRENCY, PairedRound, ceiling_candidates
from inference_server.bench.report import busy_note, findings_problem, render_report
from inference_server.bench.results import (
    VARIANT_TITLES,
    BenchResults,
    ClosedRun,
    OpenRun,
    first_answers,
    invalid,
    precision_of,
    title,
)
from inference_server.bench.servers import (
    SERVER_OMP_WAIT_POLICY,
    RunningServer,
    ServerDiedError,
    thread_cpu_s,
)
from inference_server.bench.stats import RunSummary, summarise
from inference_server.bench.targets import (
    MEASURED_DURATION_S,
    MEASURED_MAX_REQUESTS,
    MEASURED_OPEN_DURATION_S,
)
from inference_server.contract import (
    LABEL_ENDPOINT,
    LABEL_STATUS_CLASS,
    METRIC_BATCH_SIZE,
    METRIC_FORWARD_LATENCY,
    METRIC_REQUEST_LATENCY,
    Env,
)
from inference_server.contract import Path as ApiPath
from inference_server.ml.common import add_data_dir_argument

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OPEN_LOOP_LOAD = 0.75
DEFAULT_REPORT = Path("docs/reports/server-benchmark.md")
SHORT_TOKENS = 25
VARIANT_ENV = {"fp32-1t": {str(Env.TORCH_THREADS): "1"}}
LONG_TOKENS = (110, 130)


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    # Below these a run draws no verdicts (targets.verdicts_off).
    duration_s: float = MEASURED_DURATION_S
    max_requests: int = MEASURED_MAX_REQUESTS
    min_warmup: int = 8
    open_duration_s: float = MEASURED_OPEN_DURATION_S
    # The load generator at c=1 against the no-op responder: its own floor, subtracted from the
    # client-observed overhead (targets._overhead_target).
    floor_duration_s: float = 4.0
    arrivals: str = "poisson"
    ceiling_batch_sizes: tuple[int, ...] = (1, 8, 16, 32, 64)
    ceiling_min_time_s: float = 2.5
    # The bare single-sentence forward: every input once (None) in the order the c=1 cell sends them,
    # with an idle gap between passes about what the forward thread idles at c=1 behind HTTP (the ~3 ms
    # the client observes beyond the forward pass: answer out, next request in).
    single_samples: int | None = None
    single_gap_s: float = 0.003
    quality_rows: int | None = None  # None: the whole test split
    short_n: int = 384
    long_n: int = 128
    # Paired rounds (bench/paired.py): the c=32 ratios measured back to back, round after round.
    paired_rounds: int = 4
    paired_duration_s: float = 4.0
    # Each ceiling candidate (ceiling_candidates) runs at least this long and this many batches.
    paired_ceiling_s: float = 1.5
    paired_ceiling_batches: int = 4


FULL = Plan()
QUICK = Plan(
    duration_s=1.0,
    max_requests=16,
    min_warmup=2,
    open_duration_s=1.0,
    floor_duration_s=0.5,
    ceiling_batch_sizes=(1, 8),
    ceiling_min_time_s=0.1,
    single_samples=4,
    quality_rows=48,
    short_n=24,
    long_n=6,
    paired_rounds=1,
    paired_duration_s=0.5,
    paired_ceiling_s=0.1,
    paired_ceiling_batches=1,
)


@dataclass(frozen=True)
class Bench:
    """What every phase of one run shares."""

    plan: Plan
    workdir: Path
    monitor: CpuMonitor
    int8_backend: str
    onnx_cache_dir: Path


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- model and inputs ------------------------------------------------------------------------------
def is_default_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` is the built default model (the one the targets are about)."""
    from inference_server.ml.default_model import default_model_dir

    built = default_model_dir()
    return built is not None and built.resolve() == model_dir.resolve()


def resolve_model(args: argparse.Namespace, workdir: Path, notes: list[str]) -> tuple[Path, str, bool]:
    """(model directory, how it was chosen, whether it is the tiny fallback)."""
    if args.model is not None:
        return args.model, "given with --model", False
    from inference_server.ml.default_model import default_model_dir

    built = default_model_dir()
    if built is not None:
        return built, "the default model (`make model`)", False
    from inference_server.tiny_model import build_tiny_model

    notes.append(
        "THE DEFAULT MODEL IS NOT BUILT: these figures are for the tiny test model "
        "(inference_server/tiny_model.py), not for MiniLM. Run `make model`, then this benchmark again."
    )
    log("default model not built: falling back to the tiny test model (figures will not mean much)")
    return build_tiny_model(workdir / "tiny-model"), "the TINY test model (fallback)", True


def load_inputs(
    model: Any, data_dir: Path | None, dataset: str, plan: Plan
) -> tuple[InputSet, InputSet, Any]:
    from inference_server.ml.datasets import default_data_root, ensure_datasets, load_split
    from inference_server.runtime.model import count_tokens

    root = data_dir or default_data_root()
    if data_dir is None:
        ensure_datasets(root, [dataset])
    test = load_split(root, dataset, "test")
    texts = [e.text for e in test]
    tokens = count_tokens(model, texts)
    short_idx = select_short(tokens, target=SHORT_TOKENS, limit=plan.short_n)
    short = InputSet(
        "short",
        tuple(texts[i] for i in short_idx),
        tuple(test[i].label for i in short_idx),
        tuple(tokens[i] for i in short_idx),
    )
    # ~120 tokens, but never past what the server accepts (MAX_TOKENS, or the model's own limit).
    high = min(LONG_TOKENS[1], model.max_tokens)
    groups = join_long(tokens, low=min(LONG_TOKENS[0], high - 20), high=high, limit=plan.long_n)
    joined = [joined_text(texts, g) for g in groups]
    long_texts = [(t, n) for t, n in zip(joined, count_tokens(model, joined), strict=True) if n <= high]
    if not short.texts or not long_texts:
        raise SystemExit(f"server_bench: the test split of {dataset!r} is too small to pick inputs from")
    long = InputSet(
        "long",
        tuple(t for t, _ in long_texts),
        tuple(None for _ in long_texts),
        tuple(n for _, n in long_texts),
    )
    return short, long, test


def _describe(s: InputSet) -> tuple[float, str]:
    return s.mean_tokens, f"{min(s.tokens)}–{max(s.tokens)} tokens"


# --- machine ---------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "unknown RAM"


def machine_info(torch_default_threads: int, torch_threads: int) -> dict[str, Any]:
    from inference_server.runtime.threads import available_cpus, cgroup_cpu_limit

    limit = cgroup_cpu_limit()
    return {
        "cpu_model": _cpu_model(),
        "cpus": available_cpus(),
        "host_cpus": os.cpu_count(),
        "cpu_limit": f"cgroup quota {limit:g} CPUs" if limit else "no cgroup CPU quota",
        "memory": _memory(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "uvicorn": _version("uvicorn"),
        "aiohttp": _version("aiohttp"),
        "onnxruntime": _version("onnxruntime"),
        "torch_threads": torch_threads,
        "torch_default_threads": torch_default_threads,
    }


def _int8_backend() -> str:
    from inference_server.runtime.quantization import int8_backend_from_env

    return int8_backend_from_env()


def _onnx_cache_dir() -> Path:
    from inference_server.runtime.onnx_int8 import default_cache_dir

    return default_cache_dir(os.environ)


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# --- in-process phase ------------------------------------------------------------------------------
@dataclass
class InProcess:
    ceilings: list[Any]
    quality: Any
    expected: dict[tuple[str, str], list[str]]  # (precision, length) → label per input


def load_models(model_dir: Path, bench: Bench) -> dict[str, Any]:
    """fp32 and INT8 in this process, loaded once for the ceilings, the accuracy and the paired rounds."""
    from inference_server.runtime.model import load_model
    from inference_server.runtime.quantization import int8_variant, parse_int8_backend
    from inference_server.settings import ServerSettings

    fp32 = load_model(model_dir, max_tokens=ServerSettings.model_fields["max_tokens"].default)
    # Exactly what the server does for enable_quantized_model (serving/lifecycle.py), with the backend
    # and cache that the (d) server is given too (servers.sentiment_server_env). With ONNX Runtime this
    # also builds the cached INT8 file that the (d) server then loads.
    backend = parse_int8_backend(bench.int8_backend)
    return {"fp32": fp32, "int8": int8_variant(fp32, backend=backend, cache_dir=bench.onnx_cache_dir)}


def run_in_process(
    models: dict[str, Any],
    short: InputSet,
    long: InputSet,
    test: Sequence[Any],
    plan: Plan,
    skip_quality: bool,
) -> InProcess:
    from inference_server.bench.inprocess import measure_ceiling, measure_quality, predicted_labels

    ceilings, expected = [], {}
    for precision, m in models.items():
        for inputs in (short, long):
            ceilings.append(
                measure_ceiling(
                    m,
                    inputs.texts,
                    precision=precision,
                    length=inputs.name,
                    batch_sizes=plan.ceiling_batch_sizes,
                    min_time_s=plan.ceiling_min_time_s,
                    single_samples=plan.single_samples,
                    single_gap_s=plan.single_gap_s,
                )
            )
            expected[(precision, inputs.name)] = predicted_labels(m, inputs.texts)
    quality = None
    if not skip_quality:
        rows = list(test)[: plan.quality_rows] if plan.quality_rows else list(test)
        quality = measure_quality(
            models["fp32"], models["int8"], [e.text for e in rows], [e.label for e in rows]
        )
        log(
            f"macro-F1 fp32 {quality.macro_f1_fp32:.4f}, INT8 {quality.macro_f1_int8:.4f} "
            f"({quality.rows} sentences)"
        )
    return InProcess(ceilings, quality, expected)


# --- servers under load ----------------------------------------------------------------------------
def _metrics_spec(url: str) -> dict[str, Any]:
    """sentiment-server's histograms the load generator reads before and after each run (loadgen.py)."""
    return {
        "url": url.rsplit("/", 1)[0] + "/metrics",
        "histograms": {
            "batch": [METRIC_BATCH_SIZE, {}],
            "forward": [METRIC_FORWARD_LATENCY, {}],  # the pass as the server ran it
            # What the server spent on each answered /infer request (not the /metrics scrapes, not
            # failures): the overhead at c=1 is judged on it.
            "request": [
                METRIC_REQUEST_LATENCY,
                {LABEL_ENDPOINT: str(ApiPath.INFER), LABEL_STATUS_CLASS: "2xx"},
            ],
        },
    }


def run_loadgen(
    server: RunningServer,
    texts: Sequence[str],
    runs: list[dict[str, Any]],
    bench: Bench,
    tag: str,
    *,
    metrics: bool = True,
) -> list[dict[str, Any]]:
    """The load generator's runs against ``server``'s /infer; ``metrics``: read sentiment-server's
    histograms around each run. Raises ServerDiedError when the server exited meanwhile."""
    url = server.base_url + "/infer"
    spec_path, out_path = bench.workdir / f"{tag}.spec.json", bench.workdir / f"{tag}.result.json"
    spec: dict[str, Any] = {"url": url, "texts": list(texts), "runs": runs}
    if metrics:
        spec["metrics"] = _metrics_spec(url)
    spec_path.write_text(json.dumps(spec))
    # A reused --workdir may hold this tag's result from an earlier run: never read it as this one's.
    out_path.unlink(missing_ok=True)
    budget = sum(r["duration_s"] + 120.0 for r in runs) + 60.0
    bench.monitor.mark("between load runs (server start, ceilings, bookkeeping)")
    proc = subprocess.run(
        [sys.executable, "-m", "inference_server.bench.loadgen", str(spec_path), str(out_path)],
        timeout=budget,
        check=False,
    )
    bench.monitor.mark(tag)
    if proc.returncode != 0:
        # A failed run's file may be truncated; only the server's death is worth naming then.
        check_alive(server, [], tag)
        raise RuntimeError(f"load generator failed (exit {proc.returncode}) for {tag}")
    runs_out: list[dict[str, Any]] = json.loads(out_path.read_text())["runs"]
    check_alive(server, runs_out, tag)
    return runs_out


def check_alive(server: RunningServer, runs: Sequence[dict[str, Any]], tag: str) -> None:
    """Raise ServerDiedError naming the cell when the server exited during these load runs: the first
    cell with a failed request (the server's death shows there), else the whole batch of runs."""
    code = server.exit_code()
    if code is None:
        return
    cell = next((r["name"] for r in runs if r.get("first_error")), tag)
    raise ServerDiedError(f"{server.name} exited with {code} during cell {cell}")


def _summary_of(run: dict[str, Any], *, count_failures: bool = False) -> tuple[RunSummary, list[Any]]:
    """The run's summary and its answered records. ``count_failures`` (the open loop): failed requests
    count in the percentiles at their latency, which for a timeout is the client's timeout."""
    ok = [r for r in run["records"] if r[1] == 200]
    failed = [r[2] for r in run["records"] if r[1] != 200] if count_failures else []
    summary = summarise(
        [r[2] for r in ok], len(run["records"]) - len(ok), run["elapsed_s"], failed_latencies_s=failed
    )
    return summary, ok


def _mean(run: dict[str, Any], key: str, scale: float = 1.0) -> float | None:
    """Sum over count of one server histogram's change over the run (loadgen's ``histograms``), times
    ``scale``; None without the histogram (the naive app, a failed scrape) or with no observations."""
    total, count = run.get("histograms", {}).get(key, (None, None))
    return total / count * scale if count else None


def closed_runs(
    variant: str, server: RunningServer, inputs: InputSet, expected: list[str], bench: Bench
) -> list[ClosedRun]:
    plan = bench.plan
    runs = [
        {
            "name": f"{variant}-{inputs.name}-c{c}",
            "mode": "closed",
            "concurrency": c,
            "max_requests": plan.max_requests,
            "duration_s": plan.duration_s,
            "warmup": max(c, plan.min_warmup),
        }
        for c in plan.concurrencies
    ]
    out = []
    for c, run in zip(
        plan.concurrencies,
        run_loadgen(
            server, inputs.texts, runs, bench, f"{variant}-{inputs.name}-closed", metrics=variant != "naive"
        ),
        strict=True,
    ):
        summary, ok = _summary_of(run)
        server_ms = [r[4] for r in ok if r[4] is not None]
        agreement = sum(1 for r in ok if r[3] == expected[r[0]]) / len(ok) if ok else None
        cr = ClosedRun(
            variant,
            inputs.name,
            c,
            summary,
            statistics.median(server_ms) if server_ms else None,
            run["client_cpu_s"] / run["elapsed_s"] if run["elapsed_s"] else 0.0,
            agreement,
            _mean(run, "batch"),
            statistics.fmean(server_ms) if server_ms else None,
            _mean(run, "forward", 1000.0),
            request_mean_ms=_mean(run, "request", 1000.0),
            warmup_errors=int(run.get("warmup_errors", 0)),
            first_error=run["first_error"],
            answers=first_answers(run["records"], inputs.labels),
        )
        if run["first_error"]:
            log(f"  first error: {run['first_error']}")
        mean_batch = f", mean batch {cr.mean_batch:.1f}" if cr.mean_batch else ""
        log(
            f"{title(variant)} {inputs.name} c={c}: {summary.rps:.1f} req/s{mean_batch}, "
            f"p50 {summary.p50_ms:.1f} "
            f"p95 {summary.p95_ms:.1f} p99 {summary.p99_ms:.1f} ms, {summary.requests} ok, "
            f"{summary.errors} errors, {cr.warmup_errors} warm-up errors"
            + (" — INVALID" if invalid(cr) else "")
        )
        out.append(cr)
    return out


def open_run(variant: str, server: RunningServer, inputs: InputSet, rate: float, bench: Bench) -> OpenRun:
    plan = bench.plan
    spec = [
        {
            "name": f"{variant}-{inputs.name}-open",
            "mode": "open",
            "rate": rate,
            "max_requests": plan.max_requests,
            "duration_s": plan.open_duration_s,
            "arrivals": plan.arrivals,
            "seed": 0,
        }
    ]
    (run,) = run_loadgen(
        server, inputs.texts, spec, bench, f"{variant}-{inputs.name}-open", metrics=variant != "naive"
    )
    summary, _ = _summary_of(run, count_failures=True)
    if run["first_error"]:
        log(f"  first error: {run['first_error']}")
    result = OpenRun(
        variant,
        inputs.name,
        rate,
        summary,
        run["max_send_lag_ms"],
        run["client_cpu_s"] / run["elapsed_s"] if run["elapsed_s"] else 0.0,
        _mean(run, "batch"),
        warmup_errors=int(run.get("warmup_errors", 0)),
        first_error=run["first_error"],
    )
    log(
        f"{title(variant)} {inputs.name} open loop at {rate:.1f} req/s: p50 {summary.p50_ms:.1f} "
        f"p95 {summary.p95_ms:.1f} ms, {summary.requests} ok, {summary.errors} errors, "
        f"{result.warmup_errors} warm-up errors" + (" — INVALID" if invalid(result) else "")
    )
    return result


def measure_loadgen_floor(texts: Sequence[str], bench: Bench) -> dict[str, Any]:
    """The load generator at c=1 for a few seconds against the no-op responder (noop_server.py): what
    a request costs the client and loopback with no server work, for the c=1 overhead target."""
    from inference_server.bench.servers import noop_server

    spec = {
        "name": "loadgen-floor",
        "mode": "closed",
        "concurrency": 1,
        "max_requests": 1_000_000,  # bounded by the duration
        "duration_s": bench.plan.floor_duration_s,
        "warmup": bench.plan.min_warmup,
    }
    with noop_server(bench.workdir) as server:
        (run,) = run_loadgen(server, texts, [spec], bench, "loadgen-floor", metrics=False)
    summary, _ = _summary_of(run)
    if summary.errors or run.get("warmup_errors") or not summary.requests:
        raise RuntimeError(f"the load generator's floor run failed: {run['first_error']}")
    floor = {
        "mean_ms": summary.mean_ms,
        "p50_ms": summary.p50_ms,
        "requests": summary.requests,
        "duration_s": run["elapsed_s"],
        "client_cpu_ms_per_request": 1000.0 * run["client_cpu_s"] / summary.requests,
        "responder": "raw asyncio HTTP/1.1 no-op (inference_server/bench/noop_server.py)",
    }
    log(f"load generator's floor at c=1: mean {summary.mean_ms:.3f} ms over {summary.requests} requests")
    return floor


def _server(variant: str, model_dir: Path, bench: Bench) -> AbstractContextManager[RunningServer]:
    from inference_server.bench.servers import naive_server, sentiment_server

    if variant == "naive":
        return naive_server("bench-naive", model_dir, workdir=bench.workdir)
    return sentiment_server(
        f"bench-{variant}",
        model_dir,
        quantized=precision_of(variant) == "int8",
        workdir=bench.workdir,
        int8_backend=bench.int8_backend,
        onnx_cache_dir=bench.onnx_cache_dir,
        extra_env=VARIANT_ENV.get(variant),
    )


def _record_settings(variant: str, server: RunningServer, res: BenchResults) -> None:
    """The settings the server actually ran with, for the report (parsed from what it was given)."""
    from inference_server.bench.servers import settings_in_effect

    res.meta.setdefault("server_settings", {})[variant] = settings_in_effect(server.env)


def bench_variant(
    variant: str,
    model_dir: Path,
    inputs: Sequence[InputSet],
    expected: dict[tuple[str, str], list[str]],
    bench: Bench,
    res: BenchResults,
) -> None:
    log(f"starting {title(variant)} (load {_load()})")
    res.meta.setdefault("load_per_variant_raw", {})[variant] = _load()
    with _server(variant, model_dir, bench) as server:
        log(f"{title(variant)} ready after {server.started_s:.1f}s at {server.base_url}")
        res.meta.setdefault("startup_s", {})[variant] = round(server.started_s, 1)
        _record_settings(variant, server, res)
        precision = precision_of(variant)
        for s in inputs:
            res.closed += closed_runs(variant, server, s, expected[(precision, s.name)], bench)
            rate = OPEN_LOOP_LOAD * res.max_rps(variant, s.name)
            res.open.append(open_run(variant, server, s, rate, bench))


def _round_ceiling(m: Any, ceil: Ceiling, ids: Sequence[list[int]], plan: Plan) -> tuple[float, str]:
    """(sentences/s, "batch, layout") of the best candidate this round (paired.ceiling_candidates), over
    the inputs' token ids."""
    from inference_server.bench.inprocess import best_rate, sliced_layout

    candidates = ceiling_candidates(
        ceil.sentences_per_s,
        ceil.sliced_sentences_per_s,
        sliced_layout(ceil.slices),
        (ceil.best_batch_size, ceil.best_layout),
    )
    rate, batch_size, layout = best_rate(
        m,
        ids,
        candidates,
        min_time_s=plan.paired_ceiling_s,
        min_batches=plan.paired_ceiling_batches,
    )
    return rate, f"{batch_size}, {layout}"


def run_paired(
    model_dir: Path,
    models: dict[str, Any],
    inputs: Sequence[InputSet],
    variants: Sequence[str],
    bench: Bench,
    res: BenchResults,
) -> None:
    """Every server up at once; per round and input length: each ceiling, then each server at c=32."""
    plan = bench.plan
    servers = [v for v in ("naive", "fp32", "int8") if v in variants]
    if plan.paired_rounds <= 0 or not servers:
        return
    from inference_server.runtime.model import encode_ids

    log(f"paired rounds at c={PAIRED_CONCURRENCY}: {plan.paired_rounds} per length, {', '.join(servers)}")
    # The ceilings' token ids: tokenised once per precision and length, not per candidate and round.
    ids = {(p, s.name): encode_ids(m, list(s.texts)) for p, m in models.items() for s in inputs}
    with contextlib.ExitStack() as stack:
        running = {v: stack.enter_context(_server(v, model_dir, bench)) for v in servers}
        for s in inputs:
            for k in range(plan.paired_rounds):
                ceilings, configs, rps, loop_ms, errors = {}, {}, {}, {}, {}
                for precision, m in models.items():
                    ceil = res.ceiling(precision, s.name)
                    if ceil is not None:
                        ceilings[precision], configs[precision] = _round_ceiling(
                            m, ceil, ids[(precision, s.name)], plan
                        )
                bench.monitor.mark(f"paired ceilings, {s.name} round {k + 1}")
                for v, server in running.items():
                    rps[v], loop_ms[v], failed = _paired_cell(v, server, s, k, bench)
                    if failed:
                        errors[v] = failed
                res.paired.append(PairedRound(s.name, k, rps, ceilings, loop_ms, configs, errors))
                log(
                    f"paired {s.name} round {k + 1}: "
                    + ", ".join(f"{v} {x:.1f} req/s ({loop_ms[v]:.2f} ms loop CPU)" for v, x in rps.items())
                    + "; ceilings "
                    + ", ".join(f"{p} {x:.1f} ({configs[p]})" for p, x in ceilings.items())
                    + " sentences/s"
                    + (f"; FAILED requests {errors}" if errors else "")
                )


def _paired_cell(
    variant: str, server: RunningServer, inputs: InputSet, k: int, bench: Bench
) -> tuple[float, float, int]:
    """(req/s, event-loop CPU ms per request, failed requests with the warm-up's) of one server for one
    round. Failures do not stop the run: the round is marked invalid for that server (targets.py,
    report.py)."""
    spec = {
        "name": f"paired-{variant}-{inputs.name}-{k}",
        "mode": "closed",
        "concurrency": PAIRED_CONCURRENCY,
        "max_requests": 1_000_000,  # bounded by the duration
        "duration_s": bench.plan.paired_duration_s,
        "warmup": PAIRED_CONCURRENCY,
    }
    cpu_before = thread_cpu_s(server.pid)
    (run,) = run_loadgen(
        server, inputs.texts, [spec], bench, f"{variant}-{inputs.name}-paired-{k}", metrics=variant != "naive"
    )
    loop_cpu_s = thread_cpu_s(server.pid) - cpu_before
    summary, _ = _summary_of(run)
    failed = summary.errors + int(run.get("warmup_errors", 0))
    if failed:
        log(f"  {failed} requests failed in paired round {k + 1} of {variant}: {run['first_error']}")
    # Per request including the warm-up's; the loadgen's two /metrics scrapes are charged too (slightly high).
    loop_ms = 1000.0 * loop_cpu_s / (len(run["records"]) + PAIRED_CONCURRENCY)
    return float(summary.rps), loop_ms, failed


# --- CLI -------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m inference_server.bench.server_bench",
        description="Benchmark the inference server against a naive pipeline app and the raw forward pass; "
        "writes a Markdown report (and its raw figures as JSON next to it).",
    )
    p.add_argument(
        "--report", type=Path, default=DEFAULT_REPORT, help="Markdown report (default: %(default)s)"
    )
    p.add_argument("--json", type=Path, default=None, help="raw figures (default: the report with .json)")
    p.add_argument(
        "--quick", action="store_true", help="a few requests per cell: a smoke run, not a measurement"
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (default: the default model if built, else the tiny test model)",
    )
    add_data_dir_argument(p)
    p.add_argument(
        "--dataset", default="rotten_tomatoes", help="dataset whose test split supplies the inputs"
    )
    p.add_argument(
        "--variants",
        default="naive,fp32,int8",
        help="comma-separated, from naive,fp32,int8 and the optional fp32-1t (TORCH_THREADS=1)",
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per closed-loop cell (bound)")
    p.add_argument("--max-requests", type=int, default=None, help="requests per cell (bound)")
    p.add_argument("--open-duration", type=float, default=None, help="seconds of each open-loop run")
    p.add_argument(
        "--workdir", type=Path, default=None, help="logs and load-generator files (default: a temp dir)"
    )
    p.add_argument(
        "--render-from",
        type=Path,
        default=None,
        help="only re-render --report from this raw-figures JSON of an earlier run (keeps its Findings)",
    )
    p.add_argument("--skip-quality", action="store_true", help="skip the fp32/INT8 macro-F1 pass")
    return p


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.duration is not None:
        changes["duration_s"] = args.duration
    if args.max_requests is not None:
        changes["max_requests"] = args.max_requests
    if args.open_duration is not None:
        changes["open_duration_s"] = args.open_duration
    return dataclasses.replace(plan, **changes)


def _variants(text: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(VARIANT_TITLES))
    if unknown or not chosen:
        raise SystemExit(
            f"server_bench: --variants takes names from {','.join(VARIANT_TITLES)} (got {text!r})"
        )
    return [v for v in VARIANT_TITLES if v in chosen]


@contextlib.contextmanager
def _workdir(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir
        return
    with tempfile.TemporaryDirectory(prefix="server-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The in-process ceiling should be the best the forward pass can do on this machine: with libgomp's
    # default (spinning) wait policy, any other busy process makes torch's 2-thread barriers stall for
    # scheduler ticks (measured: single sentence 19 ms → 490 ms with one niced job running). Set before
    # torch loads, to the very policy every server under test is given (servers.child_env sets it
    # explicitly for each), so ceiling and servers run OpenMP alike.
    os.environ["OMP_WAIT_POLICY"] = SERVER_OMP_WAIT_POLICY
    try:
        variants = _variants(args.variants)
        if args.model is not None and not args.model.is_dir():
            raise SystemExit(f"server_bench: --model {args.model} is not a directory; pass a model directory")
        plan = _plan(args)
        _previous_report(args.report)  # before a run of many minutes, not after it
        if args.render_from is not None:
            return _render_only(args.render_from, args.report, plan)
        with _workdir(args) as workdir:
            return _run(args, plan, variants, workdir)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        raise


def _command(argv: Sequence[str] | None) -> str:
    rest = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", "inference_server.bench.server_bench", *rest])


def _run(args: argparse.Namespace, plan: Plan, variants: list[str], workdir: Path) -> int:
    t0 = time.perf_counter()
    import torch

    from inference_server.runtime.model import load_model
    from inference_server.runtime.threads import configure_torch_threads

    default_threads = torch.get_num_threads()
    threads = configure_torch_threads(0)
    notes: list[str] = []
    if args.quick:
        notes.append("QUICK RUN (--quick): a handful of requests per cell; the figures are not measurements.")
    model_dir, model_kind, fallback = resolve_model(args, workdir, notes)
    monitor = CpuMonitor()
    monitor.mark("start")
    bench = Bench(plan, workdir, monitor, _int8_backend(), _onnx_cache_dir())
    log(f"model: {model_dir} ({model_kind}); workdir {workdir}; load {_load()}")
    tokenizer_model = load_model(model_dir)
    short, long, test = load_inputs(tokenizer_model, args.data_dir, args.dataset, plan)
    labels = list(tokenizer_model.labels)
    del tokenizer_model
    log(
        f"inputs: {len(short.texts)} short (~{short.mean_tokens:.0f} tokens), "
        f"{len(long.texts)} long (~{long.mean_tokens:.0f} tokens)"
    )
    res = BenchResults(
        meta={
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": _command(None),
            "machine": machine_info(default_threads, threads),
            "model": {
                "path": str(model_dir),
                "name": model_dir.name,
                "kind": model_kind,
                "labels": labels,
                "fallback": fallback,
                # Only the default model's figures are judged (targets.verdicts_off).
                "default": not fallback and (args.model is None or is_default_model(model_dir)),
            },
            "inputs": {
                "short_n": len(short.texts),
                "short_mean_tokens": short.mean_tokens,
                "short_range": _describe(short)[1],
                "long_n": len(long.texts),
                "long_mean_tokens": long.mean_tokens,
                "long_range": _describe(long)[1],
            },
            "run": {
                "loop": "uvloop" if _has("uvloop") else "asyncio",
                "max_requests": plan.max_requests,
                "duration_s": plan.duration_s,
                "warmup": f"max(concurrency, {plan.min_warmup})",
                "arrivals": plan.arrivals,
                "open_duration_s": plan.open_duration_s,
                "quick": args.quick,
            },
            "load_before": _load(),
            "int8_backend": bench.int8_backend,
            "omp_wait_policy": SERVER_OMP_WAIT_POLICY,
        },
        notes=notes,
    )
    log("in-process: raw forward-pass ceiling, bare latency, fp32/INT8 macro-F1")
    models = load_models(model_dir, bench)
    inproc = run_in_process(models, short, long, test, plan, args.skip_quality)
    monitor.mark("in-process: ceilings, bare forward, macro-F1")
    res.ceilings, res.quality = inproc.ceilings, inproc.quality
    try:
        res.meta["loadgen_floor"] = measure_loadgen_floor(short.texts, bench)
        for variant in variants:
            bench_variant(variant, model_dir, (short, long), inproc.expected, bench, res)
        run_paired(model_dir, models, (short, long), variants, bench, res)
    except ServerDiedError as exc:
        log(f"FAILED: {exc}")
        # Written anyway, so the file says what happened; no target is judged on it (verdicts_off).
        record_server_death(res, exc)
        _finish(res, args, bench, t0)
        return EXIT_FAILED
    except Exception as exc:
        log(f"FAILED: {exc}")
        return EXIT_FAILED
    _finish(res, args, bench, t0)
    return EXIT_OK


def record_server_death(res: BenchResults, exc: ServerDiedError) -> None:
    """Mark the results of a run whose server died: a banner naming it, and no verdicts."""
    died = str(exc).split("\n", 1)[0]
    res.meta["server_died"] = died
    res.notes.append(f"A SERVER DIED UNDER TEST: {died}. The run stopped there (exit 1); no verdicts.")


def _finish(res: BenchResults, args: argparse.Namespace, bench: Bench, t0: float) -> None:
    """Close the run's records and write the report and its JSON."""
    monitor = bench.monitor
    monitor.mark("servers stopped")
    others = monitor.summary()
    if others is not None:
        res.meta["other_cpu"] = others.to_dict()
        log(
            f"CPU used by other processes: {others.mean_cores:.2f} cores on average, "
            f"{others.max_cores:.2f} max"
        )
    res.meta["load_after"] = _load()
    res.meta["load_per_variant"] = ", ".join(
        f"{v} {load}" for v, load in res.meta.get("load_per_variant_raw", {}).items()
    )
    res.meta["wall_s"] = time.perf_counter() - t0
    _loud_notes(res)
    write_report(res, args.report, args.json, bench.plan)
    log(f"report written to {args.report} in {res.meta['wall_s']:.0f}s")


def _render_only(raw: Path, report: Path, plan: Plan) -> int:
    if not raw.is_file():
        raise SystemExit(f"server_bench: --render-from {raw} is not a file; pass the JSON of an earlier run")
    res = BenchResults.from_dict(json.loads(raw.read_text()))
    concurrencies = sorted({r.concurrency for r in res.closed}) or list(plan.concurrencies)
    report.write_text(render_report(res, concurrencies=concurrencies, previous=_previous_report(report)))
    log(f"report re-rendered from {raw} to {report}")
    return EXIT_OK


def _loud_notes(res: BenchResults) -> None:
    cells: list[ClosedRun | OpenRun] = [*res.closed, *res.open]
    bad = [r for r in cells if invalid(r)]
    if bad:
        failed = sum(r.summary.errors for r in bad)
        warm = sum(r.warmup_errors for r in bad)
        res.notes.append(
            f"{failed} requests failed in measured windows and {warm} in warm-ups, in {len(bad)} of "
            f"{len(cells)} cells: those cells are invalid (struck through), and no target rests on them."
        )
    paired_failed = sum(n for r in res.paired for n in r.errors.values())
    if paired_failed:
        res.notes.append(f"{paired_failed} requests failed in the paired rounds: those rounds are invalid.")
    note = busy_note(res.other_cpu())
    if note is not None:
        res.notes.append(note)


def _previous_report(report: Path) -> str | None:
    """The report about to be replaced, whose hand-written Findings the new one keeps; SystemExit (a
    usage error) when replacing it would lose them (report.findings_problem)."""
    if not report.is_file():
        return None
    previous = report.read_text()
    problem = findings_problem(previous)
    if problem is not None:
        raise SystemExit(
            f"server_bench: not overwriting {report}: {problem}; restore the "
            "<!-- findings:start ... --> / <!-- findings:end --> pair around all of its Findings, "
            "or pass --report elsewhere"
        )
    return previous


def write_report(res: BenchResults, report: Path, json_path: Path | None, plan: Plan) -> None:
    """The raw JSON first: the report may have been damaged during the run, and refusing to overwrite it
    must not lose the run's figures (``--render-from`` turns them into a report later)."""
    report.parent.mkdir(parents=True, exist_ok=True)
    raw = json_path or report.with_suffix(".json")
    raw.write_text(json.dumps(res.to_dict(), indent=1) + "\n")
    try:
        previous = _previous_report(report)
    except SystemExit as refused:
        raise SystemExit(
            f"{refused}; this run's results are in {raw}: render them with --render-from {raw}"
        ) from None
    report.write_text(render_report(res, concurrencies=plan.concurrencies, previous=previous))


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
