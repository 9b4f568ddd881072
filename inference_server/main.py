"""`sentiment-server`: run the inference server under uvicorn on HOST:PORT (default 0.0.0.0:8080).

Configuration comes from the environment (see inference_server/settings.py); invalid configuration
exits 2 with a line naming each bad variable. SIGTERM turns /readyz to 503 at once, lets requests in
flight finish and drains the micro-batcher before exiting 0, all within SHUTDOWN_GRACE_SECONDS of the
signal (serving/drain.py): near the end, requests still waiting for a forward pass get 503 ``draining``;
a model still loading is abandoned; and a forward pass still running on a worker thread when the grace
is over (it cannot be interrupted) is not waited for. A model that must not be served (sha256 mismatch,
unloadable) exits 1.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from inference_server.serving.lifecycle import ServerState

EXIT_CONFIG = 2
EXIT_REFUSED = 1


def _parser() -> argparse.ArgumentParser:
    from inference_server.settings import environment_variables

    env = ", ".join(environment_variables())
    return argparse.ArgumentParser(
        prog="sentiment-server",
        description="Serve a sentiment model over HTTP (/infer, /infer/batch, /explain, /feedback, /healthz, "
        "/readyz, /metrics, /docs).",
        epilog=f"Configured by environment variables: {env}. See the README section 'Inference server'.",
    )


def passes_done_by_deadline(state: ServerState) -> bool:
    """Wait, until the shutdown deadline, for a forward pass still running on a worker thread (the
    interpreter would join the workers at exit, for as long as the pass takes); whether none is left."""
    deadline = state.shutdown_deadline
    if state.engine is None or deadline is None:
        return True
    return state.engine.batcher.wait_for_workers(deadline.remaining())


def exit_now(code: int) -> NoReturn:
    """End the process without joining the forward workers (nor running atexit hooks): the drain is over
    and nothing else is left to finish; logs and stdio are flushed first."""
    logging.getLogger("inference_server.main").warning(
        "a forward pass is still running at the end of the shutdown grace; exiting without it",
        extra={"fields": {"event": "exit_past_running_pass"}},
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def port_taken(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, checked before the model loads: uvicorn finds out
    only after loading it, logs the OSError as JSON and exits 3, which no one documents. Every address
    the host resolves to is bound as uvicorn binds it (SO_REUSEADDR, IPv6 sockets IPv6-only), then
    released; a race with another process remains possible."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"HOST {host!r} does not resolve ({exc.strerror}): set HOST to a local address"
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"PORT {port} is in use on {address[0]}: stop whatever listens there or set PORT"
            return f"cannot listen on {address[0]} port {port} ({exc.strerror or exc}): check HOST and PORT"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    # libgomp's idle threads spin by default; when anything else wants the pod's cores a 2-thread
    # forward pass then stalls (measured: 490 ms instead of 24 ms for one sentence with a trainer
    # beside it; fully loaded, PASSIVE costs nothing). libgomp reads this once, when torch loads, so
    # it must be set before anything (the --help text reads the settings) might import torch; an
    # operator-set value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _parser().parse_args(argv)
    from inference_server.settings import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sentiment-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    if problem := port_taken(settings.host, settings.port):
        print(f"sentiment-server: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    from inference_server.app import create_app
    from inference_server.observability.logging import configure_logging
    from inference_server.serving.drain import build_server

    configure_logging(settings.log_level)
    # transformers draws tqdm bars while loading weights: noise between the JSON log lines of a server.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # Its warnings (a load report of weights it could not match, say) through our JSON handler: its own
    # handler writes multi-line plain text into the stream of JSON lines that log collectors parse.
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    refused: list[str] = []
    holder: list[Any] = []

    def on_fatal(message: str) -> None:
        refused.append(message)
        for server in holder:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    server = build_server(settings, app)
    holder.append(server)
    server.run()
    code = 0
    if refused:
        print(f"sentiment-server: refusing to serve: {refused[0]}", file=sys.stderr)
        code = EXIT_REFUSED
    if not passes_done_by_deadline(app.state.ctx.state):
        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
