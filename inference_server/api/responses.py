"""Fast JSON responses (orjson) and the one error shape: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send


class StartTrackingSend:
    """``send`` that remembers whether the response has started: a middleware that catches an error or a
    cancellation may answer in JSON only before that (after it, a second start would break the stream)."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class JSONBytesThen(JSONBytes):
    """A JSON response that calls ``after_send`` once it is sent (or failed to send).

    For the per-request log lines: ~0.1 ms each (LogRecord, formatting, a write) that the client need
    not wait for. Unlike a BackgroundTask it runs on the event loop (no thread-pool hop) and also when
    the client has gone, so no line is lost.
    """

    def __init__(self, content: Any, *, after_send: Callable[[], None]) -> None:
        super().__init__(content)
        self._after_send = after_send

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._after_send()


def error_body(code: str, message: str, *, field: str | None = None, details: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    if details is not None:
        err["details"] = details
    return {"error": err}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONBytes:
    return JSONBytes(
        error_body(code, message, field=field, details=details),
        status_code=status,
        headers=dict(headers or {}),
    )


def error_bytes(code: str, message: str, *, field: str | None = None) -> bytes:
    """For the raw ASGI layer, which answers before a Starlette Request exists."""
    return orjson.dumps(error_body(code, message, field=field))
