"""Fixtures for the server tests: settings on the tiny model, apps with injected observability, and
helpers to wait for readiness (loading runs in the background, as in production)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inference_server.app import create_app
from inference_server.contract import Path as Path_
from inference_server.serving.lifecycle import Phase
from inference_server.settings import ServerSettings, load_settings

READY_TIMEOUT_S = 120.0  # generous: the test machine is shared and busy; this is a bound, not a timing


def settings_for(model_dir: Path, tmp_path: Path, **env: Any) -> ServerSettings:
    base: dict[str, str] = {
        "MODEL_PATH": str(model_dir),
        "MODEL_VERSION": "test-v1",
        "FEEDBACK_DB_PATH": str(tmp_path / "feedback.sqlite3"),
        "ENABLE_BATCH": "true",
        "enable_explainability": "true",
        "RATE_LIMIT_INFER_PER_SECOND": "0",
        "RATE_LIMIT_BATCH_PER_SECOND": "0",
        "RATE_LIMIT_EXPLAIN_PER_SECOND": "0",
    }
    base.update({k: str(v) for k, v in env.items()})
    return load_settings(base)


@pytest.fixture
def make_settings(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., ServerSettings]:
    def make(**env: Any) -> ServerSettings:
        return settings_for(tiny_model_dir, tmp_path, **env)

    return make


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def names(self) -> list[str]:
        return [s.name for s in self.exporter.get_finished_spans()]


def wait_phase(app: FastAPI, *, timeout_s: float = READY_TIMEOUT_S) -> Phase:
    """Block until the app's model is ready or failed (TestClient runs the app in another thread)."""
    state = app.state.ctx.state
    deadline = time.monotonic() + timeout_s
    while state.phase not in (Phase.READY, Phase.FAILED) and time.monotonic() < deadline:
        time.sleep(0.02)
    return Phase(state.phase)


def wait_until(condition: Callable[[], bool], what: str, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait on state, not on a duration; the bound only turns a broken server into a failure naming
    what never happened instead of a CI job that hangs."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


@contextmanager
def server_process(env: dict[str, str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`sentiment-server` (python -m inference_server.main) as a child process, killed on the way out if
    the test left it running (a failed assertion before its SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-m", "inference_server.main"], env=env, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_ready(port: int, proc: Any) -> httpx.Response | None:
    """Poll a server process's /readyz until 200, the process exits, or READY_TIMEOUT_S: the last answer
    (None when it never answered)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}{Path_.READYZ}", timeout=5)
            if ready.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return ready


async def await_phase(app: FastAPI, *, timeout_s: float = READY_TIMEOUT_S) -> Phase:
    state = app.state.ctx.state
    deadline = time.monotonic() + timeout_s
    while state.phase not in (Phase.READY, Phase.FAILED) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return Phase(state.phase)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan in this event loop and yield an in-process HTTP client once it is ready."""
    async with app.router.lifespan_context(app):
        phase = await await_phase(app)
        assert phase is Phase.READY, app.state.ctx.state.error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture(scope="module")
def module_spans() -> Spans:
    return Spans()


@pytest.fixture(scope="module")
def api(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_spans: Spans
) -> Iterator[TestClient]:
    """One ready app for the read-mostly API tests of a module (batch and explain enabled, no rate limits)."""
    settings = settings_for(tiny_model_dir, tmp_path_factory.mktemp("api"), MAX_BATCH_ITEMS=8)
    app = create_app(settings, tracer_provider=module_spans.provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        yield client
