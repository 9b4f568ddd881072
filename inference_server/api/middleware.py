"""Request metrics (and the request's server span) as raw ASGI middleware.

Counts and times every request, including the ones that the guard rejects (429/413/415) and the ones
that fail, labelled by a bounded set of endpoint names. When tracing is on, each request gets a SERVER
span (continuing a W3C ``traceparent`` from the caller) that parents the contract's spans.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server.contract import Path

KNOWN_ENDPOINTS = frozenset(str(p) for p in Path) | {"/openapi.json"}
OTHER_ENDPOINT = "other"  # anything else (404s, scanners) shares one series: bounded cardinality


def endpoint_label(path: str) -> str:
    return path if path in KNOWN_ENDPOINTS else OTHER_ENDPOINT


# Where the middleware records when a request arrived, so handlers report latency_ms from that origin.
REQUEST_START_KEY = "sr.start"


def request_start(request: Request) -> float:
    """When the middleware saw the request (now, for a handler called without the middleware)."""
    start: float = request.scope.get(REQUEST_START_KEY) or time.perf_counter()
    return start


class RequestMetrics:
    def __init__(
        self,
        app: ASGIApp,
        *,
        observe: Callable[[str, int, float], None],
        in_flight: Callable[[int], None],
        tracer: Any = None,
    ) -> None:
        self.app = app
        self.observe = observe
        self.in_flight = in_flight
        self.tracer = tracer  # None: tracing off, no server span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope[REQUEST_START_KEY] = start
        status = 500  # what an unhandled error is answered with (api/errors.UnhandledErrors)
        # The latency ends when the last body chunk is handed to the transport: what the app does after
        # that (the per-request log line, ~0.1 ms) keeps no client waiting, so it is not latency.
        sent_at: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent_at
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent_at = time.perf_counter()

        self.in_flight(1)
        try:
            if self.tracer is None:
                await self.app(scope, receive, send_wrapper)
            else:
                await self._traced(scope, receive, send_wrapper, lambda: status)
        finally:
            self.in_flight(-1)
            end = sent_at if sent_at is not None else time.perf_counter()
            self.observe(endpoint_label(scope["path"]), status, end - start)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, status: Callable[[], int]) -> None:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, StatusCode

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        name = f"{scope['method']} {endpoint_label(scope['path'])}"
        with self.tracer.start_as_current_span(name, context=extract(carrier), kind=SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("url.path", scope["path"])
            try:
                await self.app(scope, receive, send)
            finally:
                # OpenTelemetry's HTTP conventions: the status on the server span, and only a 5xx marks
                # the span as an error (a 4xx is the client's, not the server's).
                span.set_attribute("http.response.status_code", status())
                if status() >= 500:
                    span.set_status(StatusCode.ERROR)
