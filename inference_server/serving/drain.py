"""uvicorn, adapted for Kubernetes-style draining.

On SIGTERM (or SIGINT) the server turns unready at once (/readyz → 503, ready gauge 0) so that load
balancers stop sending new work; uvicorn stops accepting connections and lets the requests in flight
finish (up to SHUTDOWN_GRACE_SECONDS); only then does the app's lifespan stop the micro-batcher, which
first completes whatever is still queued. A completed drain exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from inference_server.serving.lifecycle import Phase
from inference_server.settings import ServerSettings


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._ctx = app.state.ctx

    def begin_drain(self) -> None:
        state = self._ctx.state
        if state.phase is not Phase.FAILED:
            state.phase = Phase.DRAINING
        self._ctx.metrics.set_ready(False)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.begin_drain()
        super().handle_exit(sig, frame)

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
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
        lifespan="on",
    )
    return DrainingServer(config, app)
