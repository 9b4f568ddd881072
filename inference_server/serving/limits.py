"""Early request checks as raw ASGI middleware, before any body is parsed.

For each guarded POST path, in order: rate limit (429 + Retry-After), Content-Type (415; also for more
than one Content-Type header), declared Content-Length over the limit (413, nothing read), then the body
is read while counting bytes and rejected (413) the moment it passes the limit, so an oversized body is
never held in memory whole, or 408 when no part of it arrives for BODY_IDLE_TIMEOUT_S (checked by one
timer for all requests, ``_StalledBodies``); a body that is
not UTF-8 is rejected (422 invalid_unicode). Only then is the request announced to the micro-batcher
(``PathPolicy.on_start``). A guarded request cancelled by the end of the shutdown grace, before any
response started, is answered 503 draining.
Raw ASGI rather than Starlette's BaseHTTPMiddleware: it costs microseconds on the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server.api.responses import StartTrackingSend, error_bytes
from inference_server.serving.ratelimit import RateLimiter, retry_after_header

JSON_MEDIA_TYPES = frozenset({"application/json"})
# A body that sends nothing for this long is answered 408 and its connection closed: uvicorn has no body
# timeout (timeout_keep_alive applies between requests only), so a stalled upload would hold its
# connection and task forever. Generous on purpose: it bounds the gap between two chunks, not the whole
# upload, and the largest body (MAX_BODY_BYTES, 256 KiB) arrives in many chunks even over a poor mobile
# link. Not a setting: nobody should need to tune it (a new variable would be a contract change).
BODY_IDLE_TIMEOUT_S = 30.0
# What the server answers a request its HTTP parser cannot read (serving/drain.json_errors_protocol).
BAD_FRAMING_MESSAGE = (
    "malformed HTTP/1.1 request: its request line, headers or body framing cannot be parsed (e.g. a "
    "Content-Length that is not one number, Transfer-Encoding with Content-Length, an unknown method, "
    "a chunk size that is not hexadecimal)"
)
# Set in scope["state"] by the HTTP protocol when it refused the framing of a body this guard is still
# reading (drain.json_errors_protocol): the read then ends as a disconnect, which is the server's 400,
# not the client's 499.
BAD_FRAMING_STATE = "bad_framing"


@dataclass
class PathPolicy:
    limiter: RateLimiter
    max_body_bytes: int
    # Called when a request passes the guard, once its whole body has arrived; returns something with
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


class BodyStalled(Exception):
    """No part of the body arrived for the guard's idle timeout."""


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: dict[str, PathPolicy],
        draining: Callable[[], bool] = lambda: False,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.policies = policies
        # Whether the server is shutting down (app.py: the shutdown deadline is set): a request cancelled
        # then is answered 503 draining instead of uvicorn's plain-text 500 (see __call__).
        self.draining = draining
        self.body_idle_timeout_s = body_idle_timeout_s
        self._stalls = _StalledBodies(body_idle_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        policy = self.policies.get(scope["path"])
        if policy is None:
            await self.app(scope, receive, send)
            return
        tracked = StartTrackingSend(send)
        try:
            await self._guarded(scope, receive, tracked, policy)
        except asyncio.CancelledError:
            # When the shutdown grace ends, uvicorn cancels every request task still running (one still
            # receiving its body, /feedback waiting on its store thread, a long text tokenizing on a
            # thread: those waiting on the batcher were answered already) and answers each with a
            # plain-text 500, logged as an error and counted as a 5xx by RequestMetrics. Answer the
            # documented 503 draining instead, unless a response has started (then nothing can be said).
            # uvicorn does not await the tasks it cancels, so returning normally after answering is safe;
            # uncancel() keeps the task's cancellation count honest for anything that runs after us.
            if tracked.started or not self.draining():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await _send_error(
                send,
                503,
                "draining",
                "server is shutting down; retry on another replica",
                headers=[(b"retry-after", b"1")],
            )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, policy: PathPolicy) -> None:
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
        content_types: list[bytes] = []
        declared: bytes | None = None  # uvicorn's parser refuses a repeated Content-Length (400)
        for name, value in scope["headers"]:  # one pass over the headers for both
            if name == b"content-type":
                content_types.append(value)
            elif name == b"content-length":
                declared = value
        if len(content_types) > 1:
            # Servers disagree on which duplicate counts (this guard kept the last, Starlette behind it
            # keeps the first), so the same request would be 200 on one path and 422 on another: refuse it.
            await _send_error(
                send,
                415,
                "unsupported_media_type",
                f"more than one Content-Type header ({len(content_types)}); send exactly one",
                field="content-type",
            )
            return
        content_type = content_types[0].decode("latin-1") if content_types else ""
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
        try:
            body = await self._read_body(receive, policy.max_body_bytes)
        except ClientGone:
            # Nobody is left to answer, and a partial body must not reach the model. The status is
            # only for the metrics: nginx's 499, a client error rather than the 500 they would
            # otherwise record (the rollout's error rate counts 5xx); or 400 when the server itself
            # closed the connection on a body it could not parse (a bad chunk size), which the protocol
            # answered already and left to this one observation.
            if scope.get("state", {}).get(BAD_FRAMING_STATE):
                await _send_error(send, 400, "bad_request", BAD_FRAMING_MESSAGE, field="body")
            else:
                await _send_error(send, 499, "client_closed_request", "client disconnected mid-body")
            return
        except BodyStalled:
            await _send_error(
                send,
                408,
                "request_timeout",
                f"no part of the body arrived for {self.body_idle_timeout_s:g}s; connection closed",
                field="body",
            )
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
        # Announced to the batcher only now, with the body in: while any ticket is open its collector
        # waits BATCH_WAIT_MS for companions instead of taking the idle fast path, so a client stalled
        # mid-upload would add that wait to every other request for as long as it stalls. A small JSON
        # body arrives with the headers, so receive() above did not suspend: ordinary requests are
        # announced at the same loop step as before.
        ticket = policy.on_start() if policy.on_start is not None else None
        try:
            if ticket is not None:
                scope.setdefault("state", {})["ticket"] = ticket
            await self.app(scope, _replay(body, receive), send)
        finally:
            if ticket is not None:
                ticket.release()

    async def _read_body(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None past ``limit``; ClientGone when the client left before sending it,
        BodyStalled when no part of it came for the idle timeout (uvicorn itself never times out a body)."""
        chunks: list[bytes] = []
        total = 0
        task = self._stalls.begin()
        try:
            while True:
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if self._stalls.stalled(task):
                        raise BodyStalled from None
                    raise  # a shutdown's cancellation (alone, or together with the sweeper's)
                self._stalls.progress(task)
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self._stalls.end(task)


class _StalledBodies:
    """Cancels the body reads that made no progress for ``timeout_s``, with one timer for all of them,
    re-armed every quarter of the timeout while any read is in progress: a stalled read ends between
    ``timeout_s`` and 1.25 × ``timeout_s`` after its last chunk. Per request this costs two dict writes;
    a timer per request (an ``asyncio.timeout`` around the read) costs ~10 µs of event-loop CPU each.

    A cancellation is withdrawn as ``asyncio.timeout`` does it: the read raises BodyStalled only when
    the sweeper's cancel is the task's only one; one from the shutdown besides it propagates."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last_progress: dict[asyncio.Task[Any], float] = {}  # loop time of each read's last chunk
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        # The loop the timer runs on: an app served by one loop after another (tests) re-arms on the new.
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None, "the guard runs in a request task"
        loop = task.get_loop()
        self._last_progress[task] = loop.time()
        if self._timer is None or self._timer_loop is not loop:
            self._arm(loop)
        return task

    def progress(self, task: asyncio.Task[Any]) -> None:
        self._last_progress[task] = task.get_loop().time()

    def end(self, task: asyncio.Task[Any]) -> None:
        self._last_progress.pop(task, None)
        self._cancelled.discard(task)

    def stalled(self, task: asyncio.Task[Any]) -> bool:
        """Whether the cancellation being handled is the sweeper's alone (then withdrawn)."""
        return task in self._cancelled and task.uncancel() == 0

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_loop = loop
        self._timer = loop.call_later(self.timeout_s / 4, self.sweep, loop)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._timer_loop:  # the timer of a loop since replaced by another
            return
        self._timer = None
        now = loop.time()
        for task, last in list(self._last_progress.items()):
            if task.done():  # its loop closed under it, before its read ended: nothing left to cancel
                self.end(task)
            elif task.get_loop() is loop and now - last >= self.timeout_s and task not in self._cancelled:
                self._cancelled.add(task)
                task.cancel()
        if self._last_progress:
            self._arm(loop)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay
