"""What the real `sentiment-server` process writes, not what a formatter makes of one captured record:
at LOG_LEVEL=INFO every stderr line is one JSON object, and one /infer is one `inference` line with its
request id and without its text (uvicorn's access log would be a second, plain-text line)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx

from inference_server import contract as c

from .conftest import server_process, wait_ready

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    """A port the kernel hands out (its ephemeral range, above 20000), on loopback only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_process_logs_json_lines_and_one_inference_line_without_the_text(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "MODEL_PATH": str(tiny_model_dir),
        "MODEL_VERSION": "logs-v1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FEEDBACK_DB_PATH": str(tmp_path / "fb.sqlite3"),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    stderr_path = tmp_path / "stderr.log"
    secret = "great film about my secret diary"
    with (
        stderr_path.open("wb") as stderr,
        server_process(env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr) as proc,
    ):
        ready = wait_ready(port, proc)
        assert ready is not None and ready.status_code == 200, stderr_path.read_text()[-3000:]
        r = httpx.post(
            f"http://127.0.0.1:{port}{c.Path.INFER}",
            json={"text": secret, "request_id": "process-log-1"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    lines = [line for line in stderr_path.read_text().splitlines() if line.strip()]
    assert lines  # at INFO the server says at least that it is ready
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a stderr line that is not JSON: {line!r}") from None
    assert all(isinstance(e, dict) for e in entries)
    inference = [(line, e) for line, e in zip(lines, entries, strict=True) if e.get("event") == "inference"]
    assert len(inference) == 1, [line for line, _ in inference]
    line, entry = inference[0]
    assert entry["request_id"] == "process-log-1" and entry["model_version"] == "logs-v1"
    assert entry["label"] == r.json()["label"] and entry["endpoint"] == c.Path.INFER
    assert "secret" not in line and "diary" not in line
    assert not [e for e in entries if e.get("logger") == "uvicorn.access"]  # one line per request, ours
    assert not any("secret" in other or "diary" in other for other in lines)
