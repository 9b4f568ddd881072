"""The fast-path route answers like FastAPI's own: same body validation, same errors, same schema.

`parse_body` is compared with a plain FastAPI route taking the same model, on fixed cases and on
generated bodies (valid, schema-violating and not JSON at all): status and every error's location and
type must agree.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.responses import Response

from inference_server import contract as c
from inference_server.api import fastpath
from inference_server.api.deps import Engine
from inference_server.api.fastpath import M, body_model, parse_body
from inference_server.api.responses import JSONBytes
from inference_server.api.schemas import BatchRequest, InferRequest

JSON = {"content-type": "application/json"}


def echo(body: BaseModel) -> Response:
    return JSONBytes({"parsed": ascii(body.model_dump())})  # ascii(): a lone surrogate is not UTF-8


def _reference_and_fast() -> TestClient:
    """/std/* are FastAPI's own body handling; /fast/* call parse_body on the raw bytes."""
    app = FastAPI()

    @app.post("/std/infer")
    async def std_infer(body: InferRequest) -> Response:
        return echo(body)

    @app.post("/std/batch")
    async def std_batch(body: BatchRequest) -> Response:
        return echo(body)

    @app.post("/fast/infer")
    async def fast_infer(request: Request) -> Response:
        return echo(parse_body(InferRequest, await request.body()))

    @app.post("/fast/batch")
    async def fast_batch(request: Request) -> Response:
        return echo(parse_body(BatchRequest, await request.body()))

    return TestClient(app)


CLIENT = _reference_and_fast()


def _outcome(path: str, body: bytes) -> tuple[int, Any]:
    r = CLIENT.post(path, content=body, headers=JSON)
    doc = r.json()
    if r.status_code == 422:
        return r.status_code, [(tuple(e["loc"]), e["type"], e.get("ctx")) for e in doc["detail"]]
    return r.status_code, doc


def assert_same(kind: str, body: bytes) -> None:
    assert _outcome(f"/fast/{kind}", body) == _outcome(f"/std/{kind}", body), body


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "great"}',
        b'{"text": "great", "request_id": "r-1"}',
        b'{"text": "great \\ud800"}',  # a lone surrogate: json accepts it, the input policy rejects it later
        b'{"text": "a", "text": "b"}',  # duplicate keys: the last wins in both
        b"",
        b"[]",
        b"null",
        b'{"text": ',
        b'{"txt": "great"}',
        b'{"text": 5}',
        b'{"text": "great", "request_id": "has space"}',
        b'{"text": "great", "extra": 1}',
        b'{"text": "great"} trailing',
        b"\xef\xbb\xbf{}",
    ],
)
def test_parse_body_agrees_with_fastapi_on_infer(body: bytes) -> None:
    assert_same("infer", body)


@pytest.mark.parametrize(
    "body",
    [b'{"items": [{"text": "a"}, {"text": 3}]}', b'{"items": "no"}', b'{"items": []}', b"{}"],
)
def test_parse_body_agrees_with_fastapi_on_batch(body: bytes) -> None:
    assert_same("batch", body)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5), max_size=2)
)
_objects = st.dictionaries(st.sampled_from(["text", "request_id", "extra", "items"]), _values, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_objects.map(lambda d: json.dumps(d).encode()), st.binary(max_size=40)))
def test_parse_body_agrees_with_fastapi_on_generated_bodies(body: bytes) -> None:
    assert_same("infer", body)


def test_body_model_names_a_wrong_signature() -> None:
    async def fine(body: InferRequest, request: Request, engine: Engine) -> Response:
        raise AssertionError

    async def extra(body: InferRequest, request: Request, engine: Engine, more: int) -> Response:
        raise AssertionError

    async def not_a_model(body: dict[str, Any], request: Request, engine: Engine) -> Response:
        raise AssertionError

    assert body_model(fine) is InferRequest
    with pytest.raises(TypeError, match="takes"):
        body_model(extra)
    with pytest.raises(TypeError, match="pydantic model"):
        body_model(not_a_model)


def test_the_inference_routes_are_served_by_the_fast_path_and_keep_their_schema(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[type[BaseModel]] = []

    def counting(model: type[M], raw: bytes) -> M:
        parsed.append(model)
        return parse_body(model, raw)

    # Served through include_router, which builds each route's handler again: still the fast path.
    monkeypatch.setattr(fastpath, "parse_body", counting)
    assert api.post(c.Path.INFER, json={"text": "great"}).status_code == 200
    assert api.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}]}).status_code == 200
    assert api.post(c.Path.FEEDBACK, json={"request_id": "r", "label": "x"}).status_code in (404, 422)
    assert parsed == [InferRequest, BatchRequest]
    operation = api.app.openapi()["paths"][c.Path.INFER]["post"]  # type: ignore[attr-defined]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferRequest")
    assert set(operation["responses"]) == {"200", "408", "413", "415", "422", "429", "503"}
