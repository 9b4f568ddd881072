"""The HTTP edge as a real client meets it: what uvicorn's parser refuses, a body that stalls or is still
arriving when the shutdown grace ends, repeated headers, HEAD probes, and texts with nothing to read.
Every answer is the one JSON error shape, and counted in the request metrics (HTTP-edge audit, session 8).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.serving import drain
from inference_server.serving.drain import DrainingServer, build_server
from inference_server.serving.lifecycle import Phase
from inference_server.serving.limits import PathPolicy, RequestGuard, _StalledBodies
from inference_server.serving.ratelimit import RateLimiter
from inference_server.settings import ServerSettings

from .conftest import READY_TIMEOUT_S, wait_phase, wait_until

MakeSettings = Callable[..., ServerSettings]
GUARDED = (c.Path.INFER, c.Path.INFER_BATCH, c.Path.EXPLAIN, c.Path.FEEDBACK)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def _start(server: DrainingServer, app: FastAPI) -> tuple[threading.Thread, int]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
    wait_until(lambda: server.started, "uvicorn listens")
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return thread, port


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _split(answer: bytes) -> tuple[bytes, bytes, bytes]:
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    return status_line, headers.lower(), payload


@pytest.fixture
def live(make_settings: MakeSettings) -> Iterator[tuple[FastAPI, DrainingServer, CollectorRegistry, int]]:
    """A real uvicorn (httptools) on 127.0.0.1, a free port, a 1 s grace; shut down at the end."""
    settings = make_settings(HOST="127.0.0.1", SHUTDOWN_GRACE_SECONDS="1")
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    server = build_server(settings, app, port=0)
    thread, port = _start(server, app)
    try:
        yield app, server, registry, port
    finally:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(timeout=60)
        assert not thread.is_alive()


def _json_post(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
    }


def _requests_total(registry: CollectorRegistry, endpoint: str, status: int) -> float | None:
    labels = {"endpoint": endpoint, "status_code": str(status), "model_version": "test-v1"}
    return registry.get_sample_value(c.METRIC_REQUESTS_SERIES, labels)


# --- the end of the shutdown grace ------------------------------------------------------------------


def test_a_body_still_arriving_when_the_grace_ends_gets_503_draining_as_json(
    live: tuple[FastAPI, DrainingServer, CollectorRegistry, int],
) -> None:
    """uvicorn cancels what still runs halfway through the grace's tail. A request still receiving its
    body was not waiting on the batcher, so nothing answered it: uvicorn sent a plain-text 500, logged
    "Exception in ASGI application" and the metrics counted a 5xx (the rollout's error rate)."""
    app, server, registry, port = live
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        body = b'{"text": "a good film"}'
        head = (
            b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        )
        sock.sendall(head % len(body) + body[:5])  # the rest never comes
        wait_until(lambda: app.state.ctx.state.in_flight == 1, "the request reaches the app")
        server.handle_exit(signal.SIGTERM, None)
        answer = _read_all(sock)
    status_line, headers, payload = _split(answer)
    assert status_line.startswith(b"HTTP/1.1 503"), answer
    assert b"content-type: application/json" in headers and b"retry-after: 1" in headers
    assert b'"code":"draining"' in payload
    wait_until(lambda: _requests_total(registry, c.Path.INFER, 503) is not None, "the 503 is counted")
    assert _requests_total(registry, c.Path.INFER, 503) == 1.0
    assert _requests_total(registry, c.Path.INFER, 500) is None


async def test_a_cancelled_request_is_still_cancelled_when_the_server_is_not_draining() -> None:
    """Only a shutdown turns a cancellation into 503 draining; otherwise it propagates as before."""

    async def receive() -> Message:
        await asyncio.Event().wait()  # a body that never comes
        raise AssertionError("unreachable")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def endpoint(*_: Any) -> None:
        raise AssertionError("a request without its body reached the endpoint")

    guard = RequestGuard(endpoint, policies={c.Path.INFER: PathPolicy(RateLimiter(0), 1024)})
    scope = _json_post(c.Path.INFER)
    task = asyncio.create_task(guard(scope, receive, send))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == []


# --- a stalled upload ----------------------------------------------------------------------------------


async def test_the_batcher_is_not_told_a_request_is_coming_before_its_body_has_arrived() -> None:
    """While a ticket is open the batcher's collector waits BATCH_WAIT_MS for companions instead of taking
    the idle fast path: a ticket taken before the body made one stalled upload slow down every request."""
    announced: list[str] = []

    class Ticket:
        def release(self) -> None:
            announced.append("released")

    def on_start() -> Ticket:
        announced.append("taken")
        return Ticket()

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b'{"text": "a"}'
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = RequestGuard(
        endpoint, policies={c.Path.INFER: PathPolicy(RateLimiter(0), 1024, on_start=on_start)}
    )
    rest_of_body = asyncio.Event()
    first: list[Message] = [{"type": "http.request", "body": b'{"te', "more_body": True}]
    waiting = asyncio.Event()

    async def receive() -> Message:
        if first:
            return first.pop()
        waiting.set()
        await rest_of_body.wait()
        return {"type": "http.request", "body": b'xt": "a"}', "more_body": False}

    async def send(_message: Message) -> None:
        pass

    scope = _json_post(c.Path.INFER)
    task = asyncio.create_task(guard(scope, receive, send))
    await asyncio.wait_for(waiting.wait(), READY_TIMEOUT_S)  # the guard waits for the rest of the body
    assert announced == [], "a request whose body has not arrived must not hold the batcher"
    rest_of_body.set()
    await task
    assert announced == ["taken", "released"]


async def test_a_body_that_stops_arriving_is_answered_408_and_reaches_nothing() -> None:
    """uvicorn never times out a body; the guard does, between chunks (30 s in production)."""
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # nothing ever arrives
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async def endpoint(*_: Any) -> None:
        raise AssertionError("a request without its body reached the endpoint")

    taken: list[int] = []
    policy = PathPolicy(RateLimiter(0), 1024, on_start=lambda: taken.append(1))
    guard = RequestGuard(endpoint, policies={c.Path.INFER: policy}, body_idle_timeout_s=0.01)
    scope = _json_post(c.Path.INFER)
    await asyncio.wait_for(guard(scope, receive, send), READY_TIMEOUT_S)
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b'"code":"request_timeout"' in sent[1]["body"] and b'"field":"body"' in sent[1]["body"]
    assert taken == []


async def test_the_stall_sweeper_cancels_only_reads_idle_for_the_whole_timeout() -> None:
    """One timer for all body reads; a read whose last chunk is older than the timeout is cancelled and
    told so, a read with recent progress is not, and a shutdown's cancel on top of the sweeper's wins."""
    stalls = _StalledBodies(30.0)
    loop = asyncio.get_running_loop()
    outcome: dict[str, str] = {}
    release = asyncio.Event()

    async def reader(name: str) -> None:
        task = stalls.begin()
        try:
            await release.wait()
            outcome[name] = "done"
        except asyncio.CancelledError:
            outcome[name] = "stalled" if stalls.stalled(task) else "cancelled"
        finally:
            stalls.end(task)

    tasks = {name: asyncio.create_task(reader(name)) for name in ("idle", "recent", "idle-at-shutdown")}
    await asyncio.sleep(0)  # each has begun its read
    last = stalls._last_progress
    last[tasks["idle"]] = last[tasks["idle-at-shutdown"]] = loop.time() - 31.0
    last[tasks["recent"]] = loop.time() - 29.0
    stalls.sweep(loop)
    tasks["idle-at-shutdown"].cancel()  # uvicorn's cancel arrives too
    await asyncio.wait_for(asyncio.gather(tasks["idle"], tasks["idle-at-shutdown"]), READY_TIMEOUT_S)
    assert stalls._timer is not None  # re-armed: a read is still in progress
    release.set()
    await asyncio.wait_for(tasks["recent"], READY_TIMEOUT_S)
    assert outcome == {"idle": "stalled", "idle-at-shutdown": "cancelled", "recent": "done"}
    assert not last and not stalls._cancelled


# --- what uvicorn's parser refuses --------------------------------------------------------------------


def test_the_uvicorn_hook_for_malformed_requests_is_still_there() -> None:
    """``send_400_response`` is not public uvicorn API: if an upgrade renames it, fail here, not silently
    fall back to plain text."""
    assert "send_400_response" in vars(HttpToolsProtocol)
    protocol = drain.json_errors_protocol(lambda: None)
    assert issubclass(protocol, HttpToolsProtocol) and "send_400_response" in vars(protocol)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n{}",
        b"FOO /infer HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
    ids=["content-length-not-a-number", "chunked-and-content-length", "unknown-method"],
)
def test_malformed_http_framing_is_answered_in_json_and_counted(
    live: tuple[FastAPI, DrainingServer, CollectorRegistry, int], request_bytes: bytes
) -> None:
    _, _, registry, port = live
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request_bytes)
        answer = _read_all(sock)
    status_line, headers, payload = _split(answer)
    assert status_line == b"HTTP/1.1 400 Bad Request", answer
    assert b"content-type: application/json" in headers and b"connection: close" in headers
    assert payload.startswith(b'{"error":{"code":"bad_request","message":"malformed HTTP/1.1 request'), (
        payload
    )
    assert f"content-length: {len(payload)}".encode() in headers
    assert _requests_total(registry, "other", 400) == 1.0


def _requests_by_series(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["endpoint"], sample.labels["status_code"]): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == c.METRIC_REQUESTS_SERIES
    }


def test_a_broken_chunk_in_a_body_is_one_400_in_the_metrics(
    live: tuple[FastAPI, DrainingServer, CollectorRegistry, int],
) -> None:
    """A chunk size that is not hexadecimal after a good chunk: the parser refuses the body the guard is
    already reading. One request, one observation: the 400 on its path, not also a 499 claiming that the
    client left (the server closed the connection); the answer names the body framing."""
    _, _, registry, port = live
    before = _requests_by_series(registry)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"tex\r\n'
        )
        sock.sendall(b"zz\r\nbad\r\n")
        answer = _read_all(sock)
    status_line, headers, payload = _split(answer)
    assert status_line == b"HTTP/1.1 400 Bad Request", answer
    assert b"content-type: application/json" in headers

    def added() -> dict[tuple[str, str], float]:
        now = _requests_by_series(registry)
        return {key: value - before.get(key, 0.0) for key, value in now.items() if value != before.get(key)}

    # The guard's observation comes from the request task, after the protocol answered and closed.
    wait_until(lambda: any(endpoint == c.Path.INFER for endpoint, _ in added()), "/infer is observed")
    assert added() == {(c.Path.INFER, "400"): 1.0}
    assert b"body framing" in payload and b"chunk size" in payload, payload


# --- repeated Content-Type ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_types",
    [("text/plain", "application/json"), ("application/json", "text/plain"), ("application/json",) * 2],
)
def test_more_than_one_content_type_is_refused_the_same_way_on_every_guarded_path(
    api: TestClient, content_types: tuple[str, ...]
) -> None:
    """The guard kept the last header and Starlette (behind it, for /feedback and /explain) the first: the
    same valid request was 200 on /infer and a misleading 422 "not a valid dictionary" on /feedback."""
    bodies: dict[str, bytes] = {
        c.Path.INFER: b'{"text": "great"}',
        c.Path.INFER_BATCH: b'{"items": [{"text": "great"}]}',
        c.Path.EXPLAIN: b'{"text": "great"}',
        c.Path.FEEDBACK: b'{"request_id": "r-1", "label": "positive"}',
    }
    for path in GUARDED:
        headers = [("content-type", ct) for ct in content_types]
        r = api.post(path, content=bodies[path], headers=headers)
        assert r.status_code == 415, (path, r.text)
        error = error_of(r)
        assert error["code"] == "unsupported_media_type" and error["field"] == "content-type", path
        assert "more than one Content-Type" in error["message"]


# --- /explain's schema ---------------------------------------------------------------------------------


def test_explain_bounds_target_label_like_feedback_label(api: TestClient) -> None:
    """A schema violation (422 invalid_request), checked before the label is looked up: before, any
    string reached the lookup, whose unknown_label message echoed it whole (a 200 KB label, a 200 KB
    error body)."""
    for label in ("x" * 129, "x" * 100_000, ""):
        r = api.post(c.Path.EXPLAIN, json={"text": "great film", "target_label": label})
        assert r.status_code == 422, r.text[:200]
        error = error_of(r)
        assert (error["code"], error["field"]) == ("invalid_request", "target_label"), error
        assert len(r.content) < 2000
    r = api.post(c.Path.EXPLAIN, json={"text": "great film", "target_label": "x" * 128})
    assert error_of(r)["code"] == "unknown_label"  # within the bound: looked up as before


@pytest.mark.parametrize("steps", [True, 20.0, "20"])
def test_explain_steps_must_be_a_json_integer(api: TestClient, steps: object) -> None:
    r = api.post(
        c.Path.EXPLAIN, json={"text": "great film", "method": "integrated_gradients", "steps": steps}
    )
    assert r.status_code == 422 and error_of(r)["field"] == "steps", r.text


def test_explain_still_takes_integer_steps(api: TestClient) -> None:
    r = api.post(c.Path.EXPLAIN, json={"text": "great film", "method": "integrated_gradients", "steps": 2})
    assert r.status_code == 200, r.text


# --- HEAD probes ---------------------------------------------------------------------------------------


def test_head_on_the_health_endpoints_answers_like_get_and_stays_out_of_the_openapi(api: TestClient) -> None:
    for path in (c.Path.HEALTHZ, c.Path.READYZ):
        r = api.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
        assert r.headers["content-type"] == "application/json"
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths[c.Path.HEALTHZ]) == {"get"} and set(paths[c.Path.READYZ]) == {"get"}


# --- texts with nothing to read ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\u200b\u200b", "\ufeff", "\u202e\u2066", "\u00ad", "\u200d \u2060"])
def test_a_text_of_only_invisible_format_characters_is_refused_as_empty(api: TestClient, text: str) -> None:
    """The tokenizer drops these: the model classified [CLS][SEP] alone, 200 with tokens 2, counted in the
    per-label prediction series that rollouts and drift read."""
    r = api.post(c.Path.INFER, json={"text": text})
    assert r.status_code == 422, r.text
    assert error_of(r) == {
        "code": "empty_text",
        "message": "text: is empty (or only whitespace, control and format characters)",
        "field": "text",
    }
    r = api.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}, {"text": text}]})
    assert r.status_code == 422 and error_of(r)["field"] == "items[1].text", r.text


# --- the drain log ---------------------------------------------------------------------------------------


def test_the_drain_log_counts_texts_not_requests(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The batcher fails one future per text (a 64-item batch counts 64): the log's field says texts."""
    app = create_app(make_settings(), registry=CollectorRegistry())
    server = build_server(app.state.ctx.settings, app, port=0)
    app.state.ctx.state.engine = SimpleNamespace(batcher=SimpleNamespace(abandon=lambda: 6))
    with caplog.at_level(logging.WARNING, logger=drain.__name__):
        server._abandon_waiting()
    [record] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "drain_abandoned"]
    assert record.fields == {"event": "drain_abandoned", "texts": 6}  # type: ignore[attr-defined]
    assert "6 text(s)" in record.getMessage()
