"""`sentiment-server`: run the inference server under uvicorn on HOST:PORT (default 0.0.0.0:8080).

Configuration comes from the environment (see inference_server/settings.py); invalid configuration
exits 2 with a line naming each bad variable. SIGTERM turns /readyz to 503 at once, lets requests in
flight finish (up to SHUTDOWN_GRACE_SECONDS) and drains the micro-batcher before exiting 0. A model
that must not be served (sha256 mismatch, unloadable) exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

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
    # libgomp's idle threads spin by default; when anything else wants the pod's cores a 2-thread
    # forward pass then stalls (measured: 490 ms instead of 24 ms for one sentence with a trainer
    # beside it; fully loaded, PASSIVE costs nothing). libgomp reads this once, when torch loads, so
    # it must be set before the first torch import; an operator-set value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from inference_server.settings import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sentiment-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from inference_server.app import create_app
    from inference_server.observability.logging import configure_logging
    from inference_server.serving.drain import build_server

    configure_logging(settings.log_level)
    # transformers draws tqdm bars while loading weights: noise between the JSON log lines of a server.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
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
    if refused:
        print(f"sentiment-server: refusing to serve: {refused[0]}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
