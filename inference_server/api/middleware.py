"""Request metrics as raw ASGI middleware: count and time every request, including the ones that the
guard rejects (429/413/415) and the ones that fail, labelled by a bounded set of endpoint names."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server.contract import Path

KNOWN_ENDPOINTS = frozenset(str(p) for p in Path) | {"/openapi.json"}
OTHER_ENDPOINT = "other"  # anything else (404s, scanners) shares one series: bounded cardinality


def endpoint_label(path: str) -> str:
    return path if path in KNOWN_ENDPOINTS else OTHER_ENDPOINT


class RequestMetrics:
    def __init__(
        self, app: ASGIApp, *, observe: Callable[[str, int, float], None], in_flight: Callable[[int], None]
    ) -> None:
        self.app = app
        self.observe = observe
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope["sr.start"] = start  # handlers report latency_ms from the same origin
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight(1)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.in_flight(-1)
            self.observe(endpoint_label(scope["path"]), status, time.perf_counter() - start)
