"""Fast JSON responses (orjson) and the one error shape: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(code: str, message: str, *, field: str | None = None, details: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    if details is not None:
        err["details"] = details
    return {"error": err}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONBytes:
    return JSONBytes(
        error_body(code, message, field=field, details=details),
        status_code=status,
        headers=dict(headers or {}),
    )


def error_bytes(code: str, message: str, *, field: str | None = None) -> bytes:
    """For the raw ASGI layer, which answers before a Starlette Request exists."""
    return orjson.dumps(error_body(code, message, field=field))
