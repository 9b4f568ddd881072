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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from inference_server.contract import Env

HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0  # a busy 2-core machine can take minutes to import torch and warm a model
STOP_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    """A server under test exited or never became ready; the message holds the tail of its log."""


@dataclass(frozen=True)
class RunningServer:
    name: str
    base_url: str
    pid: int
    log_path: Path
    started_s: float  # seconds from spawn to ready


def thread_cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) one thread of a process has used; the main thread by default, which
    is the event loop in uvicorn. Linux only: ``/proc/<pid>/task/<tid>/stat``."""
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


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


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The servers get this process's environment minus the OpenMP wait policy that the harness sets
    for its own in-process measurements (server_bench), plus what the variant asks for."""
    inherited = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return {**inherited, **env}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _spawn(
    name: str, argv: list[str], env: Mapping[str, str], ready_path: str, port: int, log_path: Path
) -> Iterator[RunningServer]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=_child_env(env), stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://{HOST}:{port}"
        _wait_ready(proc, base + ready_path, log_path, name)
        yield RunningServer(name, base, proc.pid, log_path, time.perf_counter() - t0)
    finally:
        _stop(proc)


def _sentiment_server_argv() -> list[str]:
    script = Path(sys.executable).with_name("sentiment-server")
    if script.exists():
        return [str(script)]
    found = shutil.which("sentiment-server")
    return [found] if found else [sys.executable, "-m", "inference_server.main"]


@contextlib.contextmanager
def sentiment_server(
    name: str, model_dir: Path, *, quantized: bool, workdir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[RunningServer]:
    """`sentiment-server` with the defaults a SentimentModel gets, on loopback; its log in ``workdir``."""
    port = free_port()
    env = {
        str(Env.MODEL_PATH): str(model_dir),
        str(Env.MODEL_VERSION): name,
        str(Env.HOST): HOST,
        str(Env.PORT): str(port),
        str(Env.ENABLE_QUANTIZED_MODEL): "true" if quantized else "false",
        str(Env.FEEDBACK_DB_PATH): str(workdir / f"{name}-feedback.sqlite3"),
        **(extra_env or {}),
    }
    with _spawn(name, _sentiment_server_argv(), env, "/readyz", port, workdir / f"{name}.log") as server:
        yield server


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
    env = {"NAIVE_MODEL_PATH": str(model_dir)}
    with _spawn(name, argv, env, "/healthz", port, workdir / f"{name}.log") as server:
        yield server
