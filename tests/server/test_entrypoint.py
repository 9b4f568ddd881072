"""`sentiment-server` end to end: HOST/PORT from the environment, refusal exit code, SIGTERM → exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inference_server import contract as c
from inference_server.main import EXIT_CONFIG, EXIT_REFUSED, main

from .conftest import READY_TIMEOUT_S, server_process, wait_ready


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_lists_the_variables_the_server_reads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in ("MODEL_PATH", "MAX_TOKENS", "RATE_LIMIT_EXPLAIN_PER_SECOND"))
    # only the reprocess job reads these: naming them here would suggest the server shards something
    assert c.Env.JOB_COMPLETION_INDEX not in out and c.Env.JOB_COMPLETIONS not in out


def test_sha256_mismatch_exits_1_saying_why(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "MODEL_PATH": str(tiny_model_dir),
        "MODEL_SHA256": "f" * 64,
        "HOST": "127.0.0.1",
        "PORT": str(_free_port()),
        "FEEDBACK_DB_PATH": str(tmp_path / "fb.sqlite3"),
        "LOG_LEVEL": "ERROR",
    }.items():
        monkeypatch.setenv(name, value)
    assert main([]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "refusing to serve" in err and "sha256" in err


def test_serves_on_host_and_port_and_exits_0_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "MODEL_PATH": str(tiny_model_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FEEDBACK_DB_PATH": str(tmp_path / "fb.sqlite3"),
        "LOG_LEVEL": "WARNING",
    }
    with server_process(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        ready = wait_ready(port, proc)
        assert ready is not None and ready.status_code == 200, (
            proc.stdout.read() if proc.stdout is not None and proc.poll() is not None else ""
        )
        r = httpx.post(f"http://127.0.0.1:{port}{c.Path.INFER}", json={"text": "great"}, timeout=30)
        assert r.json()["label"] == "positive"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_port_in_use_is_one_line_and_exit_2_before_the_model_loads(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # uvicorn found out only after the model had loaded, logged the OSError as JSON and exited 3.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for name, value in {
            "MODEL_PATH": str(tiny_model_dir),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "FEEDBACK_DB_PATH": str(tmp_path / "fb.sqlite3"),
        }.items():
            monkeypatch.setenv(name, value)
        assert main([]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"PORT {port} is in use on 127.0.0.1" in err and err.count("\n") == 1


def test_port_taken_says_why_for_each_cause() -> None:
    from inference_server.main import port_taken

    assert port_taken("127.0.0.1", 0) is None
    assert "does not resolve" in (port_taken("no-such-host.invalid", 8080) or "")
    assert "check HOST" in (port_taken("192.0.2.1", 8080) or "")  # TEST-NET-1: no local interface has it


def _serve_a_model_without_a_trained_head(
    tiny_model_dir: Path, tmp_path: Path, log_level: str
) -> tuple[Path, list[dict[str, object]], str]:
    """sentiment-server on a bare encoder (transformers logs a load report, then the server refuses):
    the model path, the JSON records before the last line (raises on a plain-text one), the last line."""
    from transformers import AutoModel, AutoTokenizer

    headless = tmp_path / "encoder-only"
    AutoModel.from_pretrained(tiny_model_dir).save_pretrained(headless)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(headless)
    env = {
        **os.environ,
        "MODEL_PATH": str(headless),
        "HOST": "127.0.0.1",
        "PORT": str(_free_port()),
        "FEEDBACK_DB_PATH": str(tmp_path / "fb.sqlite3"),
        "LOG_LEVEL": log_level,
    }
    done = subprocess.run(
        [sys.executable, "-m", "inference_server.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    assert done.returncode == EXIT_REFUSED, done.stderr
    *logged, last = done.stderr.strip().splitlines()
    return headless, [json.loads(line) for line in logged], last


def test_a_model_without_a_trained_head_is_refused_in_json_lines_and_one_last_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """transformers reports the weights it could not load as a multi-line table through its own log
    handler; the server routes it through its JSON handler, so every line but the last (the one-line
    refusal for a human) is JSON a log collector can parse, without the table's terminal colour codes."""
    headless, records, last = _serve_a_model_without_a_trained_head(tiny_model_dir, tmp_path, "WARNING")
    assert last.startswith(f"sentiment-server: refusing to serve: MODEL_PATH={headless}: ")
    assert "classifier" in last
    reports = [r for r in records if "LOAD REPORT" in str(r.get("msg"))]
    assert reports, records
    assert all("\x1b" not in str(r["msg"]) for r in reports), reports


def test_log_level_error_keeps_library_warnings_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    """LOG_LEVEL applies to the libraries' records routed into the JSON handler as well: transformers'
    logger has a level of its own (WARNING), which Python checks instead of the root logger's."""
    headless, records, last = _serve_a_model_without_a_trained_head(tiny_model_dir, tmp_path, "ERROR")
    assert last.startswith(f"sentiment-server: refusing to serve: MODEL_PATH={headless}: ")
    assert records and all(r["level"] == "error" for r in records), records
    assert any("refusing to serve" in str(r["msg"]) for r in records), records
