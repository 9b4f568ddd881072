"""Rate limits of /explain and /feedback (test_lifecycle covers /infer and /infer/batch): /explain has
its own limit, and /feedback its own bucket, so a flood of feedback never starves predictions and a
spent /infer budget does not refuse feedback."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.serving.lifecycle import Phase
from inference_server.settings import ServerSettings

from .conftest import wait_phase


def _limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


def test_explain_is_limited_and_feedback_has_its_own_budget(
    make_settings: Callable[..., ServerSettings],
) -> None:
    app = create_app(
        make_settings(RATE_LIMIT_INFER_PER_SECOND="0.01", RATE_LIMIT_EXPLAIN_PER_SECOND="0.01")
    )
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        # /explain: a burst of one, then 429 with Retry-After.
        assert client.post(c.Path.EXPLAIN, json={"text": "great film"}).status_code == 200
        _limited(client.post(c.Path.EXPLAIN, json={"text": "great film"}))

        # /infer's budget spent ...
        first = client.post(c.Path.INFER, json={"text": "great film", "request_id": "rl-1"})
        assert first.status_code == 200, first.text
        _limited(client.post(c.Path.INFER, json={"text": "awful film"}))
        # ... /feedback is still answered: its bucket is its own.
        wrong = "negative" if first.json()["label"] == "positive" else "positive"
        fb = client.post(c.Path.FEEDBACK, json={"request_id": "rl-1", "label": wrong})
        assert fb.status_code == 200, fb.text
        # And its own burst of one is spent now.
        _limited(client.post(c.Path.FEEDBACK, json={"request_id": "rl-1", "label": wrong}))
        # Health is never limited.
        assert client.get(c.Path.READYZ).status_code == 200
