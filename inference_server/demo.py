"""`make demo`: serve the default model (or the tiny test model when it is not built) and answer sample
requests over real HTTP, then stop the server cleanly.

It runs the real entry point (`python -m inference_server.main`, what `sentiment-server` runs) as a
child process on a free loopback port, so what you see is what a pod serves.

Stopping: Ctrl-C, SIGTERM and SIGHUP (a `timeout`, a CI cancel, `kill`, a closed terminal) all take the
same orderly path: the server is sent SIGTERM and drains (killed if it has not exited within
`STOP_TIMEOUT_S`), the temporary directory is removed, and the demo prints one line and exits 130. The
server runs in its own session, so a Ctrl-C reaches only the demo, which stops it once; on Linux it is
also tied to the demo's life (PR_SET_PDEATHSIG), so even a SIGKILL of the demo leaves no server behind.

`main(model=DIR)` serves the model directory DIR instead of choosing one (the tests use the tiny model).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

SAMPLES = (
    "I loved this film, the acting was excellent and the story wonderful.",
    "What a terrible, boring waste of time.",
    "The food was good but the service was awful.",
)
# How long the demo waits for the server's own drain (bounded by its SHUTDOWN_GRACE_SECONDS, 20 s by
# default) before it kills it.
STOP_TIMEOUT_S = 60.0
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
INTERRUPTED = "demo: interrupted; server stopped"
# What the "run it yourself" block points to in README.md.
README_SECTIONS = (
    '"Inference server" (endpoints, configuration, input policy, shutdown)',
    '"The default model and the ML pipeline" (`make model`, `sentiment-ml`)',
    '"Local control plane" (`make cluster-up`)',
)

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def cache_dir() -> Path:
    return Path(os.environ.get("SENTIMENT_CACHE", Path.home() / ".cache" / "sentiment-rollouts"))


def _default_model() -> Path | None:
    """The default model's directory when `make model` has built it (inference_server.ml.default_model)."""
    try:
        from inference_server.ml.default_model import default_model_dir
    except ImportError:  # the ML package is optional for the server; the tiny model will do
        return None
    return default_model_dir()


def model_env(directory: Path) -> dict[str, str]:
    """Calibration and the expected sha256 when the model directory comes with them (the default model)."""
    env: dict[str, str] = {}
    calibration = directory / "calibration.json"
    if calibration.is_file():
        env["CALIBRATION_PARAMS_PATH"] = str(calibration)
    sha_file = directory.with_name(directory.name + ".sha256")
    if sha_file.is_file():
        env["MODEL_SHA256"] = sha_file.read_text().strip()
    return env


def model_dir() -> tuple[Path, str]:
    found = _default_model()
    if found is not None:
        return found, "default"
    tiny = cache_dir() / "demo" / "tiny-model"
    if not (tiny / "config.json").is_file():
        print(
            f"==> default model not built (`make model` builds it); building the tiny model in {tiny} …",
            flush=True,
        )
        from inference_server.tiny_model import build_tiny_model

        build_tiny_model(tiny)
    return tiny, "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(
    client: httpx.Client, proc: subprocess.Popen[bytes], timeout_s: float = 300.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.TransportError):
            r = client.get("/readyz")
            if r.status_code == 200:
                ready: dict[str, Any] = r.json()
                return ready
        if time.monotonic() - last_report > 5:
            print("    … waiting for /readyz (loading and warming the model)", flush=True)
            last_report = time.monotonic()
        time.sleep(0.2)
    raise SystemExit(f"demo: the server was not ready within {timeout_s:.0f}s")


def show(title: str, response: httpx.Response) -> Any:
    body = response.json()
    print(
        f"\n--> {title}\n    HTTP {response.status_code}  {json.dumps(body, ensure_ascii=False)[:400]}",
        flush=True,
    )
    return body


def run_requests(client: httpx.Client, labels: list[str]) -> None:
    first: dict[str, Any] = {}
    for i, text in enumerate(SAMPLES):
        body = show(
            f"POST /infer {text!r}", client.post("/infer", json={"text": text, "request_id": f"demo-{i}"})
        )
        first = first or body
    show(
        "POST /infer/batch (results in input order)",
        client.post("/infer/batch", json={"items": [{"text": t} for t in SAMPLES]}),
    )
    show(
        "POST /explain (integrated gradients)",
        client.post("/explain", json={"text": SAMPLES[0], "method": "integrated_gradients", "steps": 16}),
    )
    wrong = next(lab for lab in labels if lab != first.get("label"))
    show(
        "POST /feedback (a wrong prediction: kept anonymised for review)",
        client.post("/feedback", json={"request_id": "demo-0", "label": wrong}),
    )
    show("POST /infer with an empty text (a clear 422)", client.post("/infer", json={"text": "  "}))
    show(
        "POST /infer as text/plain (415)",
        client.post("/infer", content=b"hi", headers={"content-type": "text/plain"}),
    )
    metrics = client.get("/metrics").text
    wanted = ("sentiment_requests_total", "sentiment_predictions_total", "sentiment_feedback_total")
    print("\n--> GET /metrics (excerpt)")
    for line in metrics.splitlines():
        if line.startswith(wanted):
            print("    " + line)
    sys.stdout.flush()


def _server_command() -> str:
    """`sentiment-server` as this virtualenv installs it: `.venv/bin/sentiment-server` from the repository."""
    script = Path(sys.executable).parent / "sentiment-server"
    if not script.is_file():
        return "sentiment-server"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def next_steps(serve_env: dict[str, str], kind: str) -> str:
    """The "run it yourself" block: the same model and features as the demo, on the default port."""
    variables = " ".join(f"{name}={shlex.quote(value)}" for name, value in serve_env.items())
    lines = [
        "\n==> next: run the server yourself (port 8080; Ctrl-C or SIGTERM drains and stops it)",
        f"    {variables} {_server_command()}",
        "    curl -s localhost:8080/infer -H 'content-type: application/json' "
        """-d '{"text": "a gorgeous, witty film"}'""",
        "    http://localhost:8080/docs  (OpenAPI: every endpoint, with a form to try it)",
    ]
    if kind == "tiny":
        lines.append("    (this is the tiny test model: `make model` builds the default one)")
    lines.append("    README.md: " + "; ".join(README_SECTIONS))
    return "\n".join(lines)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the child SIGTERM when the demo dies, even by SIGKILL, so
    the server drains and exits instead of being re-parented and left listening. Linux only: elsewhere
    None (no such guarantee)."""
    libc = _LIBC
    if libc is None:
        return None

    def preexec() -> None:  # in the child, between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class _Interrupts:
    """SIGINT, SIGTERM and SIGHUP stop the demo in order: the first raises KeyboardInterrupt (unless the
    demo is already stopping the server: it then just carries on), a second one skips waiting for the
    server's drain (`hurry`). Once stopping, no signal can cut the clean-up short."""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.received = 0
        self.stopping = False

    @property
    def hurry(self) -> bool:
        return self.received > 1

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        if not self.stopping:
            # Stopping from here on: a second signal before the clean-up begins must not raise again
            # inside it (which would skip stopping the server).
            self.stopping = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers (main thread only: signals are delivered there), then restore the
        previous ones. A signal ignored when the demo started (`nohup`, a background job) stays ignored."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}
        try:
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    previous[sig] = signal.signal(sig, self.handle)
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def stop_server(proc: subprocess.Popen[bytes], interrupts: _Interrupts) -> None:
    """SIGTERM, wait up to STOP_TIMEOUT_S for the drain (less on a second signal), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline and not interrupts.hurry:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def main(model: Path | None = None) -> int:
    """Serve `model` (default: the default model, else the tiny one) and answer the sample requests.
    0 when the server stopped cleanly, 1 when it did not, 130 when interrupted (Ctrl-C, SIGTERM, SIGHUP)."""
    interrupts = _Interrupts()
    proc: subprocess.Popen[bytes] | None = None
    with interrupts.installed():
        try:
            directory, kind = (model, "given") if model is not None else model_dir()
            port = free_port()
            serve_env = {
                "MODEL_PATH": str(directory),
                **model_env(directory),
                "ENABLE_BATCH": "true",
                "enable_explainability": "true",
            }
            with tempfile.TemporaryDirectory(prefix="sentiment-demo-") as tmp:
                env = {
                    **os.environ,
                    **serve_env,
                    "MODEL_VERSION": f"{kind}-demo",
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "FEEDBACK_DB_PATH": str(Path(tmp) / "feedback.sqlite3"),
                    "LOG_LEVEL": "WARNING",
                }
                try:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "inference_server.main"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,  # a Ctrl-C reaches the demo only; it stops the server once
                        preexec_fn=_die_with_parent(os.getpid()),
                    )
                    print(
                        f"==> serving the {kind} model {directory} on http://127.0.0.1:{port} "
                        f"(server pid {proc.pid})",
                        flush=True,
                    )
                    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                        ready = wait_ready(client, proc)
                        print(f"==> ready: {json.dumps(ready)}", flush=True)
                        run_requests(client, list(ready["labels"]))
                    print(next_steps(serve_env, kind), flush=True)
                finally:
                    interrupts.stopping = True  # from here on a signal cannot cut the clean-up short
                    if proc is not None:
                        stop_server(proc, interrupts)
        except KeyboardInterrupt:
            interrupts.stopping = True
            if proc is None:
                print("demo: interrupted before the server started", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
    assert proc is not None
    if interrupts.received:  # during the requests, or while the server was being stopped anyway
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(f"\n==> server stopped (exit code {proc.returncode})", flush=True)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
