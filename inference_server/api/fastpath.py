"""A route documented by FastAPI like any other, answered without its per-request machinery.

The inference endpoints are the hot path: at c=32 the event loop spent about 1.1 ms of CPU per
request, and FastAPI's routing, dependency injection, body parsing and exit stacks were about 45% of it
(cProfile in docs/reports/server-benchmark.md). The CPU the event loop spends is CPU the forward
passes do not get on a 2-core pod, and the INT8 server, which answers the most requests, lost the most.

`FastPathRoute` keeps everything FastAPI derives from the endpoint's signature (the OpenAPI schema,
/docs, the error responses) and the app's exception handlers, but serves a request in three steps:
the ready engine taken from the app's context (else 503), the body validated in one pydantic call
from the raw bytes, the endpoint awaited. Its endpoints take exactly ``(body, request, engine)``.

Errors are FastAPI's own: a body that fails the fast validation is parsed again the way FastAPI
parses it (``json.loads``, then the model) and its errors are raised as ``RequestValidationError``
with the same ``("body", ...)`` locations. That second pass also keeps one leniency the fast parser
lacks: ``json`` accepts a lone surrogate escape (``"\\ud800"``), so the input policy can reject it
naming the field (422 ``invalid_unicode``, serving/validation.py) instead of "invalid JSON".
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, get_type_hints

from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from inference_server.api.deps import engine_of
from inference_server.api.errors import BODY_PARSE_ERROR
from inference_server.serving.engine import InferenceEngine

M = TypeVar("M", bound=BaseModel)
FastEndpoint = Callable[[Any, Request, InferenceEngine], Awaitable[Response]]
PARAMETERS = ("body", "request", "engine")


def _body_errors(errors: list[Any]) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def parse_body(model: type[M], raw: bytes) -> M:
    """The request body as ``model``, or ``RequestValidationError`` exactly as FastAPI raises it."""
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        pass  # rare: redo it FastAPI's way, for its error locations and json's leniency (module doc)
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        error = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": e.msg}}]) from None
    except (ValueError, RecursionError):  # e.g. nesting deeper than Python's recursion limit, or an
        # integer longer than int() accepts: FastAPI catches any such error with this 400, which the
        # app's handler answers as a 422 naming the body (api/errors.py)
        raise HTTPException(400, BODY_PARSE_ERROR) from None
    try:
        return model.model_validate(data, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as e:
        raise _body_errors(e.errors(include_url=False)) from None


def body_model(endpoint: Callable[..., Any]) -> type[BaseModel]:
    """The endpoint's body model; a TypeError names the problem when its parameters are not the
    three this route passes."""
    names = tuple(inspect.signature(endpoint).parameters)
    if names != PARAMETERS:
        raise TypeError(f"{endpoint.__name__}: a FastPathRoute endpoint takes {PARAMETERS}, not {names}")
    model = get_type_hints(endpoint, include_extras=False)["body"]
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{endpoint.__name__}: `body` must be annotated with a pydantic model, not {model!r}")
    return model


class FastPathRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # FastAPI's documented hook for custom request handling; it also builds the handler of every
        # inclusion of the route through this method, so include_router keeps the fast path.
        model = body_model(self.endpoint)
        serve: FastEndpoint = self.endpoint

        async def handle(request: Request) -> Response:
            engine = engine_of(request.app.state.ctx.state)  # 503 before the body, as FastAPI's order
            return await serve(parse_body(model, await request.body()), request, engine)

        return handle
