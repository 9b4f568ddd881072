"""uvicorn, adapted for Kubernetes-style draining.

On SIGTERM (or SIGINT) the server turns unready at once (/readyz → 503, ready gauge 0) so that load
balancers stop sending new work, and the shutdown deadline starts: SHUTDOWN_GRACE_SECONDS from the
signal, one budget for every step (``lifecycle.Deadline``). uvicorn stops accepting connections and lets
the requests in flight finish; near the deadline, at the start of its tail, the requests still waiting on
the micro-batcher are answered 503 ``draining`` (with Retry-After) instead of being cancelled; halfway
through the tail uvicorn cancels whatever still runs (a guarded POST that has not started its response,
e.g. one still receiving its body, is then answered 503 ``draining`` by serving/limits.RequestGuard rather
than uvicorn's plain-text 500); then the app's lifespan stops the micro-batcher and flushes spans with
what is left. A completed drain exits 0. Requests uvicorn cannot parse get a JSON 400
(``json_errors_protocol``).

uvicorn's ``timeout_graceful_shutdown`` is annotated ``int`` but passed straight to ``asyncio.wait_for``,
so fractions of a second are honoured; it is set when shutdown begins, to what is left of the deadline
less uvicorn's own pause (0.1 s, after it asks the connections to close). What the deadline cannot bound:
that pause and the up to 0.1 s before uvicorn notices the signal, so a grace under 0.2 s ends up to that
much late; and a forward pass already running on a worker thread, which cannot be interrupted: the
process exits once it ends (its answer dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inference_server.api.middleware import OTHER_ENDPOINT
from inference_server.api.responses import error_bytes
from inference_server.serving.lifecycle import Deadline
from inference_server.serving.limits import BAD_FRAMING_MESSAGE, BAD_FRAMING_STATE
from inference_server.settings import ServerSettings

log = logging.getLogger(__name__)
# uvicorn's Server.shutdown sleeps this long after asking the connections to close, before it starts
# waiting (up to timeout_graceful_shutdown) for the requests in flight.
UVICORN_CLOSE_PAUSE_S = 0.1
# At least this long for uvicorn's wait, so that it looks once: with no request left it then returns at
# once instead of logging that it cancels zero tasks.
MIN_GRACEFUL_WAIT_S = 0.01


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._ctx = app.state.ctx
        self.grace_s: float = self._ctx.settings.shutdown_grace_seconds

    def begin_drain(self) -> Deadline:
        """Unready at once; the first call (the signal) starts the shutdown deadline."""
        deadline: Deadline = self._ctx.state.begin_drain(self.grace_s)
        self._ctx.metrics.set_ready(False)
        return deadline

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.begin_drain()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The signal's deadline; a shutdown without one (on_fatal, tests) starts it now.
        deadline = self.begin_drain()
        loop = asyncio.get_running_loop()
        abandoning = loop.call_later(deadline.until_abandon(), self._abandon_waiting)
        wait_s = max(MIN_GRACEFUL_WAIT_S, deadline.until_cancel() - UVICORN_CLOSE_PAUSE_S)
        self.config.timeout_graceful_shutdown = wait_s  # type: ignore[assignment]  # float seconds: see above
        try:
            await super().shutdown(sockets)
        finally:
            abandoning.cancel()

    def _abandon_waiting(self) -> None:
        engine = self._ctx.state.engine
        # abandon() counts what it failed on the batcher: one per text (a 64-item /infer/batch is 64) and
        # one per explanation pass, not HTTP requests; the log says so rather than mislead an alert.
        failed = engine.batcher.abandon() if engine is not None else 0
        if failed:
            log.warning(
                "shutdown grace nearly over: %d text(s) still waiting for a forward pass (an explanation "
                "counts as one) answered 503 draining",
                failed,
                extra={"fields": {"event": "drain_abandoned", "texts": failed}},
            )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process would end
        # "killed by signal 15"; a completed drain is a clean exit, so we restore handlers and exit 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def build_server(settings: ServerSettings, app: FastAPI, *, port: int | None = None) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_config=None,  # logging is configured by observability.logging (JSON lines)
        access_log=False,  # one inference line per request is ours; access lines would double it
        # Nothing here reads the client's address (rate limits are per endpoint, logs carry no IP): no
        # need to rewrite it from X-Forwarded-* headers that any client can send.
        proxy_headers=False,
        server_header=False,  # no need to advertise the server software
        # timeout_graceful_shutdown is set when shutdown begins, from the deadline (DrainingServer).
        lifespan="on",
        http=json_errors_protocol(partial(app.state.ctx.metrics.observe_request, OTHER_ENDPOINT, 400, 0.0)),
    )
    return DrainingServer(config, app)


def json_errors_protocol(on_bad_request: Callable[[], None]) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol (httptools: what ``http="auto"`` picks, installed with uvicorn[standard]),
    answering a request it cannot parse in the server's JSON error shape rather than plain text.

    Malformed framing (Content-Length not a number or repeated, Transfer-Encoding with Content-Length
    or unknown, a bad chunk size, an unknown method, an HTTP/2 preface) is refused by uvicorn's parser
    before the app sees anything, so neither the guard nor the metrics middleware can answer or count
    it: ``on_bad_request`` counts it. One exception: a body whose framing breaks off after the app has
    the request (a bad chunk size after a good chunk) is flagged in that request's scope state and
    counted once by the guard, as a 400 on its path, rather than here and as a 499 there.
    ``send_400_response`` is not public uvicorn API: tests/server/test_http_edge.py pins it."""

    class JsonErrorsHttpTools(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = error_bytes("bad_request", BAD_FRAMING_MESSAGE)
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:  # the date header, as uvicorn sends
                head.append(name + b": " + value + b"\r\n")
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
            head.append(b"connection: close\r\n\r\n")  # the stream cannot be read past this point
            self.transport.write(b"".join(head) + body)
            self.transport.close()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and cycle.more_body:
                # The body of a request the app is already handling broke off (a bad chunk size): its
                # read now ends as a disconnect, and the guard counts it once, as this 400 on its path.
                cycle.scope.setdefault("state", {})[BAD_FRAMING_STATE] = True
                return
            # Counted with the unknown paths (the request line may not even have been read): no latency
            # to speak of, so 0 s in the latency histogram.
            on_bad_request()

    return JsonErrorsHttpTools
