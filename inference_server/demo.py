"""`make demo`: serve the default model (or the tiny test model when it is not built) and answer sample
requests over real HTTP, then stop the server cleanly.

It runs the real entry point (`python -m inference_server.main`, what `sentiment-server` runs) as a
child process on a free loopback port, so what you see is what a pod serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SAMPLES = (
    "I loved this film, the acting was excellent and the story wonderful.",
    "What a terrible, boring waste of time.",
    "The food was good but the service was awful.",
)


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
    print(f"\n--> {title}\n    HTTP {response.status_code}  {json.dumps(body, ensure_ascii=False)[:400]}")
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


def main() -> int:
    directory, kind = model_dir()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sentiment-demo-") as tmp:
        env = {
            **os.environ,
            "MODEL_PATH": str(directory),
            "MODEL_VERSION": f"{kind}-demo",
            "ENABLE_BATCH": "true",
            "enable_explainability": "true",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "FEEDBACK_DB_PATH": str(Path(tmp) / "feedback.sqlite3"),
            "LOG_LEVEL": "WARNING",
            **model_env(directory),
        }
        print(f"==> serving the {kind} model {directory} on http://127.0.0.1:{port}", flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "inference_server.main"], env=env)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                ready = wait_ready(client, proc)
                print(f"==> ready: {json.dumps(ready)}")
                run_requests(client, list(ready["labels"]))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(f"\n==> server stopped (exit code {proc.returncode})")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
