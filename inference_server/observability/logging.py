"""Structured JSON logs: one object per line; one ``inference`` line per prediction, never with the text."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

INFERENCE_LOGGER = "inference_server.inference"
_inference_log = logging.getLogger(INFERENCE_LOGGER)
# Terminal colour and cursor codes (CSI sequences) that libraries write for a terminal, e.g. the bold
# title of transformers' load report: noise in a log collector.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if "\x1b" in msg:
            msg = _ANSI_ESCAPE.sub("", msg)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the whole process (uvicorn's loggers included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # On the handler too: a record propagated from a library logger with a level of its own (transformers
    # sets WARNING) is checked against the handlers' levels only, not the root logger's.
    handler.setLevel(level)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per inference is ours; uvicorn's access log would duplicate it (and cost time).
    logging.getLogger("uvicorn.access").disabled = True


def inference_fields(
    *,
    request_id: str,
    model_version: str,
    label: str,
    confidence: float,
    latency_ms: float,
    endpoint: str,
    n_tokens: int,
    calibrated: bool,
) -> dict[str, Any]:
    """The fields of an inference log line: identifiers and numbers only, by construction no text."""
    return {
        "event": "inference",
        "request_id": request_id,
        "model_version": model_version,
        "label": label,
        "confidence": round(confidence, 6),
        "latency_ms": round(latency_ms, 3),
        "endpoint": endpoint,
        "tokens": n_tokens,
        "calibrated": calibrated,
    }


def log_inference(fields: dict[str, Any]) -> None:
    if _inference_log.isEnabledFor(logging.INFO):
        _inference_log.info("inference", extra={"fields": fields})
