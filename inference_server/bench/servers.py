"""Starting and stopping the servers under test as subprocesses on loopback (the benchmark's I/O shell)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from inference_server.bench.machine import parse_task_stat
from inference_server.contract import Env

HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0  # a busy 2-core machine can take minutes to import torch and warm a model
STOP_TIMEOUT_S = 30.0
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
# libgomp's wait policy for every server under test, the naive app included: a deployment setting (an
# environment variable, not code), and sentiment-server sets the same for itself (main.py), so (a) and
# (c)/(d) run torch's threads alike. Spinning idle threads make a 2-thread pass collapse whenever
# anything else runs (Findings of docs/reports/server-benchmark.md).
SERVER_OMP_WAIT_POLICY = "PASSIVE"
# Thread counts and spinning of the OpenMP and MKL runtimes torch links: what the harness's shell
# exported would change how a server runs its threads (the naive app's torch defaults, baseline (a),
# most of all) without showing in the report, so no server inherits them.
THREAD_RUNTIME_VARIABLES = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT"})
THREAD_RUNTIME_PREFIX = "KMP_"  # Intel's OpenMP runtime: KMP_BLOCKTIME, KMP_AFFINITY, …
# What the bench chooses for sentiment-server beyond the model and the address: no rate limits (0
# disables a limiter, serving/ratelimit.py), since a 429 under a benchmark's load would measure the
# limiter, not the server. Everything else is the settings' default.
BENCH_SERVER_SETTINGS = {
    str(Env.RATE_LIMIT_INFER_PER_SECOND): "0",
    str(Env.RATE_LIMIT_BATCH_PER_SECOND): "0",
}


class ServerStartError(RuntimeError):
    """A server under test exited or never became ready; the message holds the tail of its log."""


class ServerDiedError(RuntimeError):
    """A server under test exited on its own after it was ready (killed for memory, crashed), or with an
    error when stopped: no figure measured on it after that may stand."""


def _still_running() -> int | None:
    return None


@dataclass(frozen=True)
class RunningServer:
    name: str
    base_url: str
    pid: int
    log_path: Path
    started_s: float  # seconds from spawn to ready
    env: dict[str, str]  # what the bench set for it (over the harness's environment minus server settings)
    # Its exit code if it has exited (Popen.poll), else None: checked after every load run.
    exit_code: Callable[[], int | None] = field(default=_still_running, compare=False)


def thread_cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) one thread of a process has used; the main thread by default, which
    is the event loop in uvicorn. Linux only: ``/proc/<pid>/task/<tid>/stat``."""
    stat = parse_task_stat(Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text())
    return (stat.utime + stat.stime) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with {proc.returncode} before ready:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise ServerStartError(f"{name} not ready after {READY_TIMEOUT_S:.0f}s:\n{_tail(log_path)}")


def server_setting_names() -> frozenset[str]:
    """Lower-cased names of every environment variable sentiment-server's settings read (they match
    case-insensitively, so ``max_batch_size`` counts as much as ``MAX_BATCH_SIZE``)."""
    from inference_server.settings import environment_variables

    return frozenset(name.lower() for name in [*environment_variables(), OMP_WAIT_POLICY])


def child_env(inherited: Mapping[str, str], chosen: Mapping[str, str]) -> dict[str, str]:
    """A server's environment: the harness's minus every server setting (and the OpenMP wait policy)
    and the OpenMP/MKL thread variables (``THREAD_RUNTIME_VARIABLES``, ``KMP_*``), plus what the bench
    chose. Without this a server would pick up whatever TORCH_THREADS, MAX_BATCH_SIZE, RATE_LIMIT_…,
    OMP_NUM_THREADS the shell running the bench happened to export, while the report printed the
    defaults."""
    dropped = server_setting_names() | {name.lower() for name in THREAD_RUNTIME_VARIABLES}
    prefix = THREAD_RUNTIME_PREFIX.lower()
    kept = {
        k: v for k, v in inherited.items() if k.lower() not in dropped and not k.lower().startswith(prefix)
    }
    return {**kept, **chosen}


# What the report shows of a sentiment-server's settings (the knobs that change its figures).
REPORTED_SETTINGS = (
    ("max_batch_size", Env.MAX_BATCH_SIZE),
    ("batch_wait_ms", Env.BATCH_WAIT_MS),
    ("max_batch_tokens", Env.MAX_BATCH_TOKENS),
    ("max_tokens", Env.MAX_TOKENS),
    ("torch_threads", Env.TORCH_THREADS),
    ("forward_workers", Env.FORWARD_WORKERS),
    ("rate_limit_infer_per_second", Env.RATE_LIMIT_INFER_PER_SECOND),
    ("rate_limit_batch_per_second", Env.RATE_LIMIT_BATCH_PER_SECOND),
    ("int8_backend", Env.INT8_BACKEND),
    ("log_level", Env.LOG_LEVEL),
)


def settings_in_effect(env: Mapping[str, str]) -> dict[str, str]:
    """The values a server given ``env`` runs with, by variable name: for sentiment-server as its own
    settings parse them (so a default shows as what it is), plus the OpenMP wait policy; for the naive
    app (no MODEL_PATH) only what it was given besides the model."""
    shown: dict[str, str] = {}
    if str(Env.MODEL_PATH) in env:
        from inference_server.settings import load_settings

        settings = load_settings(env)
        shown = {str(name): str(getattr(settings, field)) for field, name in REPORTED_SETTINGS}
    else:
        shown = {k: v for k, v in env.items() if not k.endswith("MODEL_PATH")}
    if OMP_WAIT_POLICY in env:
        shown[OMP_WAIT_POLICY] = env[OMP_WAIT_POLICY]
    return shown


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Stop the server (SIGTERM, SIGKILL after ``STOP_TIMEOUT_S``); its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


CLEAN_STOPS = frozenset({0, -signal.SIGTERM})


@contextlib.contextmanager
def _spawn(
    name: str, argv: list[str], env: Mapping[str, str], ready_path: str, port: int, log_path: Path
) -> Iterator[RunningServer]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=child_env(os.environ, env), stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://{HOST}:{port}"
        _wait_ready(proc, base + ready_path, log_path, name)
        yield RunningServer(
            name, base, proc.pid, log_path, time.perf_counter() - t0, dict(env), exit_code=proc.poll
        )
        died = proc.poll()  # before we stop it: an exit here was the server's own
    finally:
        stopped = _stop(proc)
    if died is not None:
        raise ServerDiedError(f"{name} exited with {died} while under test:\n{_tail(log_path)}")
    if stopped not in CLEAN_STOPS:
        raise ServerDiedError(f"{name} exited with {stopped} when stopped:\n{_tail(log_path)}")


def _sentiment_server_argv() -> list[str]:
    script = Path(sys.executable).with_name("sentiment-server")
    if script.exists():
        return [str(script)]
    found = shutil.which("sentiment-server")
    return [found] if found else [sys.executable, "-m", "inference_server.main"]


def sentiment_server_env(
    name: str,
    model_dir: Path,
    *,
    port: int,
    quantized: bool,
    workdir: Path,
    int8_backend: str,
    onnx_cache_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every variable the bench sets for sentiment-server. The INT8 backend and its cache are the ones
    the harness's in-process INT8 model used, so (d) serves the very file the INT8 ceiling ran."""
    return {
        str(Env.MODEL_PATH): str(model_dir),
        str(Env.MODEL_VERSION): name,
        str(Env.HOST): HOST,
        str(Env.PORT): str(port),
        str(Env.ENABLE_QUANTIZED_MODEL): "true" if quantized else "false",
        str(Env.INT8_BACKEND): int8_backend,
        str(Env.ONNX_CACHE_DIR): str(onnx_cache_dir),
        str(Env.FEEDBACK_DB_PATH): str(workdir / f"{name}-feedback.sqlite3"),
        OMP_WAIT_POLICY: SERVER_OMP_WAIT_POLICY,
        **BENCH_SERVER_SETTINGS,
        **(extra_env or {}),
    }


@contextlib.contextmanager
def sentiment_server(
    name: str,
    model_dir: Path,
    *,
    quantized: bool,
    workdir: Path,
    int8_backend: str,
    onnx_cache_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RunningServer]:
    """`sentiment-server` with the defaults a SentimentModel gets (rate limits off), on loopback; its log
    in ``workdir``."""
    port = free_port()
    env = sentiment_server_env(
        name,
        model_dir,
        port=port,
        quantized=quantized,
        workdir=workdir,
        int8_backend=int8_backend,
        onnx_cache_dir=onnx_cache_dir,
        extra_env=extra_env,
    )
    with _spawn(name, _sentiment_server_argv(), env, "/readyz", port, workdir / f"{name}.log") as server:
        yield server


@contextlib.contextmanager
def noop_server(workdir: Path) -> Iterator[RunningServer]:
    """The no-op responder (bench/noop_server.py) the load generator's own floor is measured against."""
    port = free_port()
    argv = [sys.executable, "-m", "inference_server.bench.noop_server", str(port)]
    with _spawn("bench-noop", argv, {}, "/", port, workdir / "bench-noop.log") as server:
        yield server


def naive_env(model_dir: Path) -> dict[str, str]:
    return {"NAIVE_MODEL_PATH": str(model_dir), OMP_WAIT_POLICY: SERVER_OMP_WAIT_POLICY}


@contextlib.contextmanager
def naive_server(name: str, model_dir: Path, *, workdir: Path) -> Iterator[RunningServer]:
    """The naive baseline (inference_server/bench/naive_app.py) under plain uvicorn."""
    port = free_port()
    # uvicorn's defaults, as a user would run it (access log on: one line per request, like the server's
    # own JSON inference line).
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "inference_server.bench.naive_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with _spawn(name, argv, naive_env(model_dir), "/healthz", port, workdir / f"{name}.log") as server:
        yield server
