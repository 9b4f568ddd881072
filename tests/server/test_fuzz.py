"""Fuzzing the HTTP API in-process: no generated input may produce a 5xx.

Schema-driven (schemathesis, from the app's own OpenAPI: valid and schema-violating inputs for every
operation) and byte-level (hypothesis: arbitrary bodies and content types on every POST endpoint).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.serving.lifecycle import Phase

from .conftest import READY_TIMEOUT_S, settings_for, wait_phase

EXAMPLES = 30  # per operation and mode: enough to reach every error path, small enough for 2 busy cores
POSTS = {c.Path.INFER, c.Path.INFER_BATCH, c.Path.EXPLAIN, c.Path.FEEDBACK}


def test_no_server_error_on_schema_driven_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    # MAX_BATCH_ITEMS at its default (64): the schema sets no maxItems, and with a small limit half the
    # generated batches stopped at 413 too_many_items instead of reaching the model.
    app = create_app(settings_for(tiny_model_dir, tmp_path))
    # Loading the schema sends the first request, which makes schemathesis start the app's lifespan (in its
    # own event-loop thread, kept until the test ends); then wait for the model as a client would.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    state = app.state.ctx.state
    deadline = time.monotonic() + READY_TIMEOUT_S
    while state.phase is not Phase.READY and time.monotonic() < deadline:
        assert state.phase is not Phase.FAILED, state.error
        time.sleep(0.05)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= POSTS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
                continue  # only a body can violate the schema: the GETs here take no input

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                response = case.call()
                case.validate_response(response, checks=[not_a_server_error])
                if response.status_code >= 400:
                    assert "error" in response.json()  # every error is JSON {"error": {...}}

            run()


@pytest.fixture(scope="module")
def ready_client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(settings_for(tiny_model_dir, tmp_path_factory.mktemp("fuzz"), MAX_BATCH_ITEMS=4))
    with TestClient(app, raise_server_exceptions=True) as client:
        assert wait_phase(app) is Phase.READY
        yield client


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["text", "items", "request_id", "label", "method", "steps", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(
    path=st.sampled_from(sorted(POSTS)),
    body=st.one_of(st.binary(max_size=300), JSONISH.map(lambda v: json.dumps(v).encode())),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_on_arbitrary_bytes(
    ready_client: TestClient, path: str, body: bytes, content_type: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = ready_client.post(path, content=body, headers=headers)
    assert response.status_code < 500, (path, body, response.text)
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}
