"""Exception handlers: every error is JSON {"error": {...}}; a 500 only for a true bug (logged once)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inference_server.api.responses import StartTrackingSend, error_response
from inference_server.serving.batching import DrainingError
from inference_server.serving.validation import InputProblem

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "not_ready",
}


# FastAPI's answer when reading a body fails other than by a JSON syntax error (its routing catches any
# exception there); for the client it is malformed JSON like any other, so it gets the same 422.
BODY_PARSE_ERROR = "There was an error parsing the body"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'items', 3, 'text') → 'items[3].text'; the body itself → 'body'."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _describe(errors: list[dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    details = []
    for e in errors:
        path = field_path(tuple(e.get("loc", ())))
        kind = e.get("type", "")
        msg = "body is not valid JSON" if kind == "json_invalid" else str(e.get("msg", "invalid"))
        if kind == "json_invalid":
            path = "body"
        details.append({"field": path, "message": msg, "type": kind})
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return first["field"], f"{first['field']}: {first['message']}", details


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    field, message, details = _describe(list(exc.errors()))
    return error_response(422, "invalid_request", message, field=field, details=details)


async def _input_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputProblem)
    return error_response(exc.status, exc.code, str(exc), field=exc.field)


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)


async def _draining(_: Request, exc: Exception) -> Response:
    return error_response(
        503, "draining", "server is shutting down; retry on another replica", headers={"Retry-After": "1"}
    )


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
        # FastAPI's routes and the fast path (api/fastpath.py, which mirrors FastAPI) both raise this;
        # answered here, once, as the malformed JSON it is.
        unreadable = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}
        return await _validation(request, RequestValidationError([unreadable]))
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else code
    return error_response(exc.status_code, code, detail, headers=exc.headers)


class UnhandledErrors:
    """The outermost middleware: an exception no handler took is logged once and answered with the
    JSON 500, and the request ends normally.

    Registering a handler for ``Exception`` with FastAPI is not enough: Starlette's ServerErrorMiddleware
    answers with it and then re-raises for the server, which logs the error a second time ("Exception
    in ASGI application") and drops the client's keep-alive connection, so the client's next request
    on it fails too. Only an error after the response has started is left to the server: the client
    has part of an answer and the connection must close.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = StartTrackingSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            _log_bug(scope, exc)
            if tracked.started:
                raise
            response = error_response(500, "internal_error", "internal server error (logged); this is a bug")
            await response(scope, receive, send)


def _log_bug(scope: Scope, exc: Exception) -> None:
    path = str(scope.get("path", ""))
    log.error(
        "unhandled error on %s %s",
        scope.get("method", ""),
        path,
        exc_info=exc,
        extra={"fields": {"event": "internal_error", "path": path}},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InputProblem, _input_problem)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DrainingError, _draining)
    app.add_exception_handler(StarletteHTTPException, _http)
