"""Shutdown within SHUTDOWN_GRACE_SECONDS: one deadline from the signal, shared by uvicorn's wait, the
batcher's drain and the span flush; 503 `draining` (not a bare 500) for requests still waiting when the
grace runs out; a model load or a span flush that would outlast it is abandoned."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.feedback.recent import RecentPredictions
from inference_server.main import passes_done_by_deadline
from inference_server.observability import tracing
from inference_server.observability.metrics import ServerMetrics
from inference_server.serving import lifecycle
from inference_server.serving.batching import MicroBatcher
from inference_server.serving.drain import DrainingServer, build_server
from inference_server.serving.lifecycle import Deadline, Phase, ServerState, bring_up, in_daemon_thread
from inference_server.settings import ServerSettings

from .conftest import serving, wait_phase, wait_until

MakeSettings = Callable[..., ServerSettings]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Opened at the end of every test, whatever happened: nothing stays blocked on it."""
    event = threading.Event()
    yield event
    event.set()


def _start(server: DrainingServer, app: FastAPI) -> tuple[threading.Thread, str]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
    wait_until(lambda: server.started, "uvicorn listens")
    port = server.servers[0].sockets[0].getsockname()[1]
    return thread, f"http://127.0.0.1:{port}"


# --- one deadline, from the signal ---------------------------------------------------------------


def test_requests_still_waiting_at_the_deadline_get_503_draining_and_the_deadline_is_shared(
    make_settings: MakeSettings, gate: threading.Event
) -> None:
    """Over real HTTP, a forward pass that does not end before the grace does: the request in it and those
    queued behind it are answered 503 `draining` with Retry-After (before: uvicorn cancelled them, a
    plain-text 500 each). The deadline starts at the signal, and the batcher's drain gets only what is
    left of it (before: the whole grace again, after uvicorn's wait)."""
    grace = 2.5  # fractional on purpose
    settings = make_settings(HOST="127.0.0.1", SHUTDOWN_GRACE_SECONDS=str(grace))
    app = create_app(settings)
    server = build_server(settings, app, port=0)
    thread, base = _start(server, app)
    batcher = app.state.ctx.state.engine.batcher
    entered = threading.Event()

    def stuck(batch: list[list[int]]) -> np.ndarray:
        entered.set()
        gate.wait(60)
        return np.zeros((len(batch), 2), dtype=np.float32)

    batcher._run_batch = stuck
    stops: list[tuple[float, float]] = []
    stop = batcher.stop

    async def recording_stop(timeout_s: float = 30.0) -> None:
        stops.append((time.monotonic(), timeout_s))
        await stop(timeout_s)

    batcher.stop = recording_stop

    def post(i: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(f"{base}{c.Path.INFER}", json={"text": f"great film {i}"})

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, 0)
        assert entered.wait(60)
        others = [pool.submit(post, i) for i in (1, 2)]
        # two queued behind the pass in progress
        wait_until(lambda: batcher.pending >= 3, "two requests queue behind the pass in progress")
        before = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        after = time.monotonic()
        answers = [f.result(timeout=60) for f in (first, *others)]
    thread.join(timeout=60)
    assert not thread.is_alive() and not gate.is_set()  # shut down without waiting for the pass
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "draining" and r.headers["retry-after"] == "1"
    deadline = app.state.ctx.state.shutdown_deadline
    assert before + grace <= deadline.at <= after + grace  # taken when the signal came
    # uvicorn's wait ended before the deadline, in float seconds (it was int(grace), and at least 1).
    assert isinstance(server.config.timeout_graceful_shutdown, float)
    assert server.config.timeout_graceful_shutdown < grace
    [(called_at, timeout_s)] = stops
    assert called_at + timeout_s <= deadline.at  # the batcher's drain ends by the same deadline


def test_a_fractional_grace_is_not_rounded_up(make_settings: MakeSettings) -> None:
    settings = make_settings(HOST="127.0.0.1", SHUTDOWN_GRACE_SECONDS="0.5")
    app = create_app(settings)
    server = build_server(settings, app, port=0)
    thread, _ = _start(server, app)
    server.handle_exit(signal.SIGTERM, None)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert 0 < server.config.timeout_graceful_shutdown < 0.5  # was max(1, int(0.5)) == 1


def test_the_deadline_splits_the_grace_and_is_taken_once() -> None:
    state = ServerState()
    deadline = state.begin_drain(10.0)
    assert state.phase is Phase.DRAINING
    assert state.begin_drain(99.0) is deadline  # a second signal, the lifespan's end: the same one
    assert deadline.tail_s == 1.0 and Deadline.after(2.0).tail_s == 0.5 and Deadline.after(0).tail_s == 0
    assert deadline.until_abandon() < deadline.until_cancel() < deadline.remaining() <= 10.0
    failed = ServerState(phase=Phase.FAILED)
    failed.begin_drain(1.0)
    assert failed.phase is Phase.FAILED


# --- model loading is abandoned, not waited for ------------------------------------------------


async def test_a_shutdown_during_loading_abandons_the_load_on_a_daemon_thread(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    """The interpreter joins non-daemon threads at exit (asyncio.to_thread's among them): a SIGTERM while a
    large model loads waited for the whole load (7.5 s measured). The load now runs on a daemon thread."""
    entered = threading.Event()
    daemon: list[bool] = []

    def slow_load(_: ServerSettings) -> Any:
        daemon.append(threading.current_thread().daemon)
        entered.set()
        gate.wait(60)
        raise RuntimeError("load finished after it was abandoned")

    monkeypatch.setattr(lifecycle, "load_everything", slow_load)
    state = ServerState()
    task = asyncio.create_task(
        bring_up(
            make_settings(),
            state,
            metrics=ServerMetrics("v", CollectorRegistry()),
            tracer=trace.NoOpTracer(),
            recent=RecentPredictions(),
        )
    )
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)  # at once, the load still running
    assert daemon == [True] and not gate.is_set()
    gate.set()  # the late outcome goes nowhere, and changes nothing
    await asyncio.sleep(0.05)
    assert state.phase is Phase.LOADING


async def test_in_daemon_thread_delivers_results_and_errors() -> None:
    assert await in_daemon_thread(lambda a, b: a + b, 2, 3, name="t") == 5
    with pytest.raises(ValueError, match="bad"):
        await in_daemon_thread(lambda: int("bad"), name="t")


# --- the span flush ----------------------------------------------------------------------------


class StuckProvider:
    """A tracer provider whose shutdown (the final flush) never ends by itself: a collector that does not
    answer."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.shutdown_on: list[threading.Thread] = []

    def get_tracer(self, _name: str) -> trace.Tracer:
        return trace.NoOpTracer()

    def shutdown(self) -> None:
        self.shutdown_on.append(threading.current_thread())
        self.release.wait(60)


async def test_the_final_span_flush_ends_with_the_grace(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    """It blocked the event loop for as long as the exporter retried (18.6 s with a dead collector and a
    grace of 2); now it runs on a daemon thread and is abandoned when the grace is over."""
    provider = StuckProvider(gate)
    monkeypatch.setattr("inference_server.app.build_tracer_provider", lambda *_a, **_k: provider)
    app = create_app(make_settings(SHUTDOWN_GRACE_SECONDS="0.3"))
    async with serving(app) as client:
        assert (await client.post(c.Path.INFER, json={"text": "great"})).status_code == 200
    # The lifespan has ended, its flush still blocked.
    [flusher] = provider.shutdown_on
    assert flusher.daemon and flusher.is_alive() and not gate.is_set()


def test_the_otlp_exporter_gives_up_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter is built with a short timeout (the SDK's default: 10 s of retries a batch), and the
    provider without the SDK's second, unbounded flush at interpreter exit."""
    import opentelemetry.exporter.otlp.proto.http.trace_exporter as otlp
    import opentelemetry.sdk.trace as sdk

    for name in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    built: dict[str, dict[str, Any]] = {}

    def recording(cls: Any, key: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            built[key] = kwargs
            return cls(*args, **kwargs)

        return make

    monkeypatch.setattr(otlp, "OTLPSpanExporter", recording(otlp.OTLPSpanExporter, "exporter"))
    monkeypatch.setattr(sdk, "TracerProvider", recording(sdk.TracerProvider, "provider"))
    provider = tracing.build_tracer_provider("http://127.0.0.1:9", model_version="v")
    try:
        assert built["exporter"]["timeout"] == tracing.EXPORT_TIMEOUT_S <= 2.0
        assert built["provider"]["shutdown_on_exit"] is False
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "7")  # an operator's choice is kept
        assert tracing.export_timeout_s() is None
    finally:
        tracing.shutdown_provider(provider)


# --- a forward pass running past the deadline ----------------------------------------------------


async def test_exit_waits_for_a_running_pass_only_until_the_deadline(gate: threading.Event) -> None:
    entered = threading.Event()

    def stuck(batch: list[list[int]]) -> np.ndarray:
        entered.set()
        gate.wait(60)
        return np.zeros((len(batch), 2), dtype=np.float32)

    batcher = MicroBatcher(stuck, wait_ms=0)
    batcher.start()
    running = asyncio.create_task(batcher.submit([1]))
    assert await asyncio.to_thread(entered.wait, 30)

    def state(grace_s: float) -> SimpleNamespace:
        return SimpleNamespace(
            engine=SimpleNamespace(batcher=batcher), shutdown_deadline=Deadline.after(grace_s)
        )

    assert not await asyncio.to_thread(passes_done_by_deadline, state(0.05))  # main() then exits at once
    assert passes_done_by_deadline(SimpleNamespace(engine=None, shutdown_deadline=Deadline.after(0)))
    gate.set()
    assert await asyncio.to_thread(passes_done_by_deadline, state(30))
    await running
    await batcher.stop()
