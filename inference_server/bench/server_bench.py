"""`make bench-server`: the naive baseline, the raw forward pass, and this server (fp32, INT8), side by side.

    python -m inference_server.bench.server_bench --report docs/reports/server-benchmark.md [--quick]

Steps: pick the inputs from the test split → in-process ceiling, bare forward latency and fp32/INT8
macro-F1 → for each server variant, start it on loopback, drive it with the load generator (its own
process) closed-loop at each concurrency and open-loop at 75% of its best throughput, stop it → write
the Markdown report and a JSON file of raw figures next to it. Targets missed are reported, not fatal:
the exit code is 0 for a completed run, 1 when a server or the load generator failed, 2 for bad arguments.
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

from inference_server.bench.inputs import InputSet, join_long, joined_text, select_short
from inference_server.bench.paired import PAIRED_CONCURRENCY, PairedRound
from inference_server.bench.report import (
    VARIANT_TITLES,
    BenchResults,
    ClosedRun,
    OpenRun,
    precision_of,
    render_report,
)
from inference_server.bench.servers import RunningServer, thread_cpu_s
from inference_server.bench.stats import summarise
from inference_server.contract import METRIC_BATCH_SIZE, METRIC_FORWARD_LATENCY, Env
from inference_server.ml.common import add_data_dir_argument

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OPEN_LOOP_LOAD = 0.75
DEFAULT_REPORT = Path("docs/reports/server-benchmark.md")
SHORT_TOKENS = 25
VARIANT_ENV = {"fp32-1t": {str(Env.TORCH_THREADS): "1"}, "fp32-passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
LONG_TOKENS = (110, 130)


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    duration_s: float = 8.0
    max_requests: int = 3000
    min_warmup: int = 8
    open_duration_s: float = 12.0
    arrivals: str = "poisson"
    ceiling_batch_sizes: tuple[int, ...] = (1, 8, 16, 32, 64)
    ceiling_min_time_s: float = 2.5
    single_samples: int = 60
    quality_rows: int | None = None  # None: the whole test split
    short_n: int = 384
    long_n: int = 128
    # Paired rounds (bench/paired.py): the c=32 ratios measured back to back, round after round.
    paired_rounds: int = 4
    paired_duration_s: float = 4.0
    paired_ceiling_s: float = 1.5


FULL = Plan()
QUICK = Plan(
    duration_s=1.0,
    max_requests=16,
    min_warmup=2,
    open_duration_s=1.0,
    ceiling_batch_sizes=(1, 8),
    ceiling_min_time_s=0.1,
    single_samples=4,
    quality_rows=48,
    short_n=24,
    long_n=6,
    paired_rounds=1,
    paired_duration_s=0.5,
    paired_ceiling_s=0.1,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- model and inputs ------------------------------------------------------------------------------
def resolve_model(args: argparse.Namespace, workdir: Path, notes: list[str]) -> tuple[Path, str]:
    if args.model is not None:
        return args.model, "given with --model"
    from inference_server.ml.default_model import default_model_dir

    built = default_model_dir()
    if built is not None:
        return built, "the default model (`make model`)"
    from inference_server.tiny_model import build_tiny_model

    notes.append(
        "THE DEFAULT MODEL IS NOT BUILT: these figures are for the tiny test model "
        "(inference_server/tiny_model.py), not for MiniLM. Run `make model`, then this benchmark again."
    )
    log("default model not built: falling back to the tiny test model (figures will not mean much)")
    return build_tiny_model(workdir / "tiny-model"), "the TINY test model (fallback)"


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


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# --- in-process phase ------------------------------------------------------------------------------
@dataclass
class InProcess:
    ceilings: list[Any]
    quality: Any
    expected: dict[tuple[str, str], list[str]]  # (precision, length) → label per input


def load_models(model_dir: Path) -> dict[str, Any]:
    """fp32 and INT8 in this process, loaded once for the ceilings, the accuracy and the paired rounds."""
    from inference_server.runtime.model import load_model
    from inference_server.runtime.quantization import int8_backend_from_env, int8_variant
    from inference_server.settings import ServerSettings

    fp32 = load_model(model_dir, max_tokens=ServerSettings.model_fields["max_tokens"].default)
    # Exactly what the server does for enable_quantized_model (serving/lifecycle.py), with the backend
    # it serves by default (INT8_BACKEND, which the (d) server inherits too). With ONNX Runtime this
    # also builds the cached INT8 file that the (d) server then loads.
    return {"fp32": fp32, "int8": int8_variant(fp32, backend=int8_backend_from_env())}


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
def run_loadgen(
    url: str, texts: Sequence[str], runs: list[dict[str, Any]], workdir: Path, tag: str
) -> list[dict[str, Any]]:
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec = {"url": url, "texts": list(texts), "runs": runs}
    if not tag.startswith("naive"):  # sentiment-server: read its batch sizes from /metrics
        spec |= {
            "metrics_url": url.rsplit("/", 1)[0] + "/metrics",
            "batch_metric": METRIC_BATCH_SIZE,
            "forward_metric": METRIC_FORWARD_LATENCY,  # the pass as the server ran it (overhead at c=1)
        }
    spec_path.write_text(json.dumps(spec))
    budget = sum(r["duration_s"] + 120.0 for r in runs) + 60.0
    proc = subprocess.run(
        [sys.executable, "-m", "inference_server.bench.loadgen", str(spec_path), str(out_path)],
        timeout=budget,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {proc.returncode}) for {tag}")
    runs_out: list[dict[str, Any]] = json.loads(out_path.read_text())["runs"]
    return runs_out


def _summary_of(run: dict[str, Any]) -> tuple[Any, list[Any]]:
    ok = [r for r in run["records"] if r[1] == 200]
    summary = summarise([r[2] for r in ok], len(run["records"]) - len(ok), run["elapsed_s"])
    return summary, ok


def closed_runs(
    variant: str, url: str, inputs: InputSet, expected: list[str], plan: Plan, workdir: Path
) -> list[ClosedRun]:
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
        run_loadgen(url, inputs.texts, runs, workdir, f"{variant}-{inputs.name}-closed"),
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
            _mean_batch(run),
            statistics.fmean(server_ms) if server_ms else None,
            _mean_forward_ms(run),
        )
        if run["first_error"]:
            log(f"  first error: {run['first_error']}")
        mean_batch = f", mean batch {cr.mean_batch:.1f}" if cr.mean_batch else ""
        log(
            f"{VARIANT_TITLES[variant]} {inputs.name} c={c}: {summary.rps:.1f} req/s{mean_batch}, "
            f"p50 {summary.p50_ms:.1f} "
            f"p95 {summary.p95_ms:.1f} p99 {summary.p99_ms:.1f} ms, {summary.requests} ok, "
            f"{summary.errors} errors"
        )
        out.append(cr)
    return out


def open_run(variant: str, url: str, inputs: InputSet, rate: float, plan: Plan, workdir: Path) -> OpenRun:
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
    (run,) = run_loadgen(url, inputs.texts, spec, workdir, f"{variant}-{inputs.name}-open")
    summary, _ = _summary_of(run)
    log(
        f"{VARIANT_TITLES[variant]} {inputs.name} open loop at {rate:.1f} req/s: p50 {summary.p50_ms:.1f} "
        f"p95 {summary.p95_ms:.1f} ms, {summary.requests} ok, {summary.errors} errors"
    )
    return OpenRun(
        variant,
        inputs.name,
        rate,
        summary,
        run["max_send_lag_ms"],
        run["client_cpu_s"] / run["elapsed_s"] if run["elapsed_s"] else 0.0,
        _mean_batch(run),
    )


def _mean_forward_ms(run: dict[str, Any]) -> float | None:
    """Mean milliseconds per forward pass on the server's forward thread during the run."""
    forward_s, batches = run.get("forward_s"), run.get("batches")
    return forward_s / batches * 1000.0 if forward_s is not None and batches else None


def _mean_batch(run: dict[str, Any]) -> float | None:
    batches, items = run.get("batches"), run.get("batched_items")
    return items / batches if batches else None


def _server(variant: str, model_dir: Path, workdir: Path) -> AbstractContextManager[Any]:
    from inference_server.bench.servers import naive_server, sentiment_server

    if variant == "naive":
        return naive_server("bench-naive", model_dir, workdir=workdir)
    extra = VARIANT_ENV.get(variant)
    return sentiment_server(
        f"bench-{variant}",
        model_dir,
        quantized=precision_of(variant) == "int8",
        workdir=workdir,
        extra_env=extra,
    )


def bench_variant(
    variant: str,
    model_dir: Path,
    inputs: Sequence[InputSet],
    expected: dict[tuple[str, str], list[str]],
    plan: Plan,
    workdir: Path,
    res: BenchResults,
) -> None:
    log(f"starting {VARIANT_TITLES[variant]} (load {_load()})")
    res.meta.setdefault("load_per_variant_raw", {})[variant] = _load()
    with _server(variant, model_dir, workdir) as server:
        log(f"{VARIANT_TITLES[variant]} ready after {server.started_s:.1f}s at {server.base_url}")
        res.meta.setdefault("startup_s", {})[variant] = round(server.started_s, 1)
        url = server.base_url + "/infer"
        precision = precision_of(variant)
        for s in inputs:
            res.closed += closed_runs(variant, url, s, expected[(precision, s.name)], plan, workdir)
            rate = OPEN_LOOP_LOAD * res.max_rps(variant, s.name)
            res.open.append(open_run(variant, url, s, rate, plan, workdir))


def run_paired(
    model_dir: Path,
    models: dict[str, Any],
    inputs: Sequence[InputSet],
    variants: Sequence[str],
    plan: Plan,
    workdir: Path,
    res: BenchResults,
) -> None:
    """Every server up at once; per round and input length: each ceiling, then each server at c=32."""
    from inference_server.bench.inprocess import rate_at

    servers = [v for v in ("naive", "fp32", "int8") if v in variants]
    if plan.paired_rounds <= 0 or not servers:
        return
    log(f"paired rounds at c={PAIRED_CONCURRENCY}: {plan.paired_rounds} per length, {', '.join(servers)}")
    with contextlib.ExitStack() as stack:
        running = {v: stack.enter_context(_server(v, model_dir, workdir)) for v in servers}
        for s in inputs:
            for k in range(plan.paired_rounds):
                ceilings, rps, loop_ms = {}, {}, {}
                for precision, m in models.items():
                    ceil = res.ceiling(precision, s.name)
                    if ceil is not None:
                        ceilings[precision] = rate_at(
                            m,
                            s.texts,
                            batch_size=ceil.best_batch_size,
                            layout=ceil.best_layout,
                            min_time_s=plan.paired_ceiling_s,
                        )
                for v, server in running.items():
                    rps[v], loop_ms[v] = _paired_cell(v, server, s, k, plan, workdir)
                res.paired.append(PairedRound(s.name, k, rps, ceilings, loop_ms))
                log(
                    f"paired {s.name} round {k + 1}: "
                    + ", ".join(f"{v} {x:.1f} req/s ({loop_ms[v]:.2f} ms loop CPU)" for v, x in rps.items())
                    + "; ceilings "
                    + ", ".join(f"{p} {x:.1f}" for p, x in ceilings.items())
                    + f" sentences/s (load {_load()})"
                )


def _paired_cell(
    variant: str, server: RunningServer, inputs: InputSet, k: int, plan: Plan, workdir: Path
) -> tuple[float, float]:
    """(req/s, event-loop CPU ms per request) of one server for one round."""
    spec = {
        "name": f"paired-{variant}-{inputs.name}-{k}",
        "mode": "closed",
        "concurrency": PAIRED_CONCURRENCY,
        "max_requests": 1_000_000,  # bounded by the duration
        "duration_s": plan.paired_duration_s,
        "warmup": PAIRED_CONCURRENCY,
    }
    cpu_before = thread_cpu_s(server.pid)
    (run,) = run_loadgen(
        server.base_url + "/infer", inputs.texts, [spec], workdir, f"{variant}-{inputs.name}-paired-{k}"
    )
    loop_cpu_s = thread_cpu_s(server.pid) - cpu_before
    summary, _ = _summary_of(run)
    if summary.errors:
        raise RuntimeError(f"{summary.errors} requests failed in paired round {k + 1} of {variant}")
    # Per request including the warm-up's; the loadgen's two /metrics scrapes are charged too (slightly high).
    return float(summary.rps), 1000.0 * loop_cpu_s / (len(run["records"]) + PAIRED_CONCURRENCY)


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
        help="comma-separated, from naive,fp32,int8 and the optional fp32-1t (TORCH_THREADS=1), "
        "fp32-passive (OMP_WAIT_POLICY=PASSIVE)",
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
    # torch loads; the servers under test do not inherit it (servers._child_env).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        variants = _variants(args.variants)
        if args.model is not None and not args.model.is_dir():
            raise SystemExit(f"server_bench: --model {args.model} is not a directory; pass a model directory")
        plan = _plan(args)
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
    model_dir, model_kind = resolve_model(args, workdir, notes)
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
            "model": {"path": str(model_dir), "name": model_dir.name, "kind": model_kind, "labels": labels},
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
                **_server_defaults(),
                "quick": args.quick,
            },
            "load_before": _load(),
            "int8_backend": _int8_backend(),
        },
        notes=notes,
    )
    log("in-process: raw forward-pass ceiling, bare latency, fp32/INT8 macro-F1")
    models = load_models(model_dir)
    inproc = run_in_process(models, short, long, test, plan, args.skip_quality)
    res.ceilings, res.quality = inproc.ceilings, inproc.quality
    try:
        for variant in variants:
            bench_variant(variant, model_dir, (short, long), inproc.expected, plan, workdir, res)
        run_paired(model_dir, models, (short, long), variants, plan, workdir, res)
    except Exception as exc:
        log(f"FAILED: {exc}")
        return EXIT_FAILED
    res.meta["load_after"] = _load()
    res.meta["load_per_variant"] = ", ".join(
        f"{v} {load}" for v, load in res.meta.get("load_per_variant_raw", {}).items()
    )
    res.meta["wall_s"] = time.perf_counter() - t0
    _loud_notes(res)
    write_report(res, args.report, args.json, plan)
    log(f"report written to {args.report} in {res.meta['wall_s']:.0f}s")
    return EXIT_OK


def _render_only(raw: Path, report: Path, plan: Plan) -> int:
    if not raw.is_file():
        raise SystemExit(f"server_bench: --render-from {raw} is not a file; pass the JSON of an earlier run")
    res = BenchResults.from_dict(json.loads(raw.read_text()))
    concurrencies = sorted({r.concurrency for r in res.closed}) or list(plan.concurrencies)
    previous = report.read_text() if report.is_file() else None
    report.write_text(render_report(res, concurrencies=concurrencies, previous=previous))
    log(f"report re-rendered from {raw} to {report}")
    return EXIT_OK


def _loud_notes(res: BenchResults) -> None:
    errors = sum(r.summary.errors for r in res.closed) + sum(r.summary.errors for r in res.open)
    if errors:
        res.notes.append(f"{errors} requests failed during the run (see the error counts in the tables).")
    load1 = os.getloadavg()[0]
    if load1 > 3.0:
        res.notes.append(
            f"The machine was busy (1-minute load average {load1:.1f} on "
            f"{os.cpu_count()} CPUs at the end): other processes competed for the CPUs."
        )


def write_report(res: BenchResults, report: Path, json_path: Path | None, plan: Plan) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    previous = report.read_text() if report.is_file() else None
    report.write_text(render_report(res, concurrencies=plan.concurrencies, previous=previous))
    (json_path or report.with_suffix(".json")).write_text(json.dumps(res.to_dict(), indent=1) + "\n")


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _server_defaults() -> dict[str, Any]:
    from inference_server.settings import ServerSettings

    fields = ServerSettings.model_fields
    return {k: fields[k].default for k in ("max_batch_size", "batch_wait_ms", "max_batch_tokens")}


if __name__ == "__main__":
    sys.exit(main())
