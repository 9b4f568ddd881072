"""Early request checks as raw ASGI middleware, before any body is parsed.

For each guarded POST path, in order: rate limit (429 + Retry-After), Content-Type (415), declared
Content-Length over the limit (413, nothing read), then the body is read while counting bytes and
rejected (413) the moment it passes the limit, so an oversized body is never held in memory whole,
and a body that is not UTF-8 is rejected (422 invalid_unicode).
Raw ASGI rather than Starlette's BaseHTTPMiddleware: it costs microseconds on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server.api.responses import error_bytes
from inference_server.serving.ratelimit import RateLimiter, retry_after_header

JSON_MEDIA_TYPES = frozenset({"application/json"})


@dataclass
class PathPolicy:
    limiter: RateLimiter
    max_body_bytes: int
    # Called when a request passes the guard, before its body is read; returns something with
    # ``release()`` (a batcher ticket) that is stored in scope["state"]["ticket"] and released at the end.
    on_start: Callable[[], Any] | None = None


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mt = media_type(content_type)
    return mt in JSON_MEDIA_TYPES or (mt.startswith("application/") and mt.endswith("+json"))


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    field: str | None = None,
) -> None:
    body = error_bytes(code, message, field=field)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The client may still be sending: tell it the connection will not be reused.
    hdrs.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    """The client disconnected before it had sent the whole body."""


class RequestGuard:
    def __init__(self, app: ASGIApp, *, policies: dict[str, PathPolicy]) -> None:
        self.app = app
        self.policies = policies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        policy = self.policies.get(scope["path"])
        if policy is None:
            await self.app(scope, receive, send)
            return
        decision = policy.limiter.try_acquire()
        if not decision.allowed:
            retry = retry_after_header(decision.retry_after_s)
            await _send_error(
                send,
                429,
                "rate_limited",
                f"rate limit of {policy.limiter.rate:g}/s for {scope['path']} exceeded; retry after {retry}s",
                headers=[(b"retry-after", retry.encode())],
            )
            return
        headers = dict(scope["headers"])  # later duplicates win; fine for these two headers
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if not is_json(content_type):
            shown = content_type or "none"
            await _send_error(
                send,
                415,
                "unsupported_media_type",
                f"Content-Type must be application/json, got {shown}",
                field="content-type",
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_error(
                    send, 400, "bad_request", "Content-Length is not a number", field="content-length"
                )
                return
            if length > policy.max_body_bytes:
                await _send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"body of {length} bytes exceeds the limit of {policy.max_body_bytes} bytes",
                    field="body",
                )
                return
        ticket = policy.on_start() if policy.on_start is not None else None
        try:
            try:
                body = await self._read_body(receive, policy.max_body_bytes)
            except ClientGone:
                # Nobody is left to answer, and a partial body must not reach the model. The status is
                # only for the metrics: nginx's 499, a client error rather than the 500 they would
                # otherwise record (the rollout's error rate counts 5xx).
                await _send_error(send, 499, "client_closed_request", "client disconnected mid-body")
                return
            if body is None:
                await _send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"body exceeds the limit of {policy.max_body_bytes} bytes",
                    field="body",
                )
                return
            try:
                body.decode("utf-8")  # JSON is UTF-8 (RFC 8259); anything else is a client error
            except UnicodeDecodeError as exc:
                await _send_error(
                    send, 422, "invalid_unicode", f"body is not valid UTF-8 (byte {exc.start})", field="body"
                )
                return
            if ticket is not None:
                scope.setdefault("state", {})["ticket"] = ticket
            await self.app(scope, _replay(body, receive), send)
        finally:
            if ticket is not None:
                ticket.release()

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None past ``limit``; ClientGone when the client left before sending it."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay
