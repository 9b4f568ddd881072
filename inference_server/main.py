"""`sentiment-server`: run the inference server under uvicorn on HOST:PORT (default 0.0.0.0:8080).

Configuration comes from the environment (see inference_server/settings.py); invalid configuration
exits 2 with a line naming each bad variable. SIGTERM turns /readyz to 503 at once, lets requests in
flight finish (up to SHUTDOWN_GRACE_SECONDS) and drains the micro-batcher before exiting 0. A model
that must not be served (sha256 mismatch, unloadable) exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from inference_server.contract import Env

EXIT_CONFIG = 2
EXIT_REFUSED = 1


def _parser() -> argparse.ArgumentParser:
    env = ", ".join(str(e) for e in Env)
    return argparse.ArgumentParser(
        prog="sentiment-server",
        description="Serve a sentiment model over HTTP (/infer, /infer/batch, /explain, /feedback, /healthz, "
        "/readyz, /metrics, /docs).",
        epilog=f"Configured by environment variables: {env}. See the README section 'Inference server'.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(argv)
    from inference_server.settings import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sentiment-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    import uvicorn

    from inference_server.app import create_app
    from inference_server.observability.logging import configure_logging
    from inference_server.serving.lifecycle import Phase

    configure_logging(settings.log_level)
    refused: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        refused.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    state = app.state.ctx.state
    metrics = app.state.ctx.metrics

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Turn unready before anything else, so load balancers stop sending new work while the
            # requests in flight finish.
            if state.phase is not Phase.FAILED:
                state.phase = Phase.DRAINING
            metrics.set_ready(False)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process ends
            # "killed by signal 15"; a completed drain is a clean exit, so we exit 0 instead.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        lifespan="on",
    )
    server = _Server(config)
    server.run()
    if refused:
        print(f"sentiment-server: refusing to serve: {refused[0]}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
