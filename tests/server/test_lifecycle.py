"""Start-up and shutdown: not ready → 503, sha256 verification, INT8, calibration, rate limits, drain."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.runtime.artifact import sha256_of_artifact
from inference_server.serving.drain import build_server
from inference_server.serving.lifecycle import Phase
from inference_server.settings import ServerSettings

from .conftest import Spans, serving, wait_phase, wait_until

MakeSettings = Callable[..., ServerSettings]


def test_not_ready_answers_503_but_healthz_is_alive(make_settings: MakeSettings) -> None:
    app = create_app(make_settings())
    client = TestClient(app)  # no `with`: the lifespan (model loading) never starts
    assert client.get(c.Path.HEALTHZ).status_code == 200
    r = client.get(c.Path.READYZ)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    r = client.post(c.Path.INFER, json={"text": "great"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_sha256_mismatch_refuses_to_serve(make_settings: MakeSettings) -> None:
    fatal: list[str] = []
    app = create_app(make_settings(MODEL_SHA256="0" * 64), on_fatal=fatal.append)
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.FAILED
        r = client.get(c.Path.READYZ)
        assert r.status_code == 503 and r.json()["error"]["code"] == "artifact_mismatch"
        assert client.post(c.Path.INFER, json={"text": "great"}).status_code == 503
    assert len(fatal) == 1 and "sha256" in fatal[0]


def test_matching_sha256_serves_and_model_load_span_is_recorded(
    make_settings: MakeSettings, tiny_model_dir: Path
) -> None:
    spans = Spans()
    app = create_app(
        make_settings(MODEL_SHA256=sha256_of_artifact(tiny_model_dir)), tracer_provider=spans.provider
    )
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY
        assert client.post(c.Path.INFER, json={"text": "great"}).status_code == 200
    assert c.Span.MODEL_LOAD in spans.names()


def test_quantized_model_serves_the_same_labels(make_settings: MakeSettings) -> None:
    """INT8_BACKEND=torch (ONNX Runtime, the default, is covered in test_int8_serving.py)."""
    texts = ["great", "awful", "i love this excellent film", "terrible boring plot"]
    app = create_app(make_settings(enable_quantized_model="true", INT8_BACKEND="torch"))
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        ready = client.get(c.Path.READYZ).json()
        assert ready["quantized"] is True
        import torch

        linear = [
            m for m in app.state.ctx.state.engine.model.model.modules() if isinstance(m, torch.nn.Linear)
        ]
        assert linear == []  # every Linear was swapped for its dynamically quantized version
        labels = [client.post(c.Path.INFER, json={"text": t}).json()["label"] for t in texts]
        assert labels == ["positive", "negative", "positive", "negative"]
        # Saliency still works: it runs on the fp32 weights kept for it.
        assert client.post(c.Path.EXPLAIN, json={"text": "great film"}).status_code == 200


def test_calibration_scales_the_confidence(make_settings: MakeSettings, tmp_path: Path) -> None:
    params = tmp_path / "calibration.json"
    params.write_text(json.dumps({"temperature": 4.0}))
    plain = create_app(make_settings())
    scaled = create_app(make_settings(CALIBRATION_PARAMS_PATH=str(params)))
    with TestClient(plain) as a, TestClient(scaled) as b:
        assert wait_phase(plain) is Phase.READY and wait_phase(scaled) is Phase.READY
        ra = a.post(c.Path.INFER, json={"text": "great"}).json()
        rb = b.post(c.Path.INFER, json={"text": "great"}).json()
    assert ra["calibrated"] is False and rb["calibrated"] is True
    assert ra["label"] == rb["label"] and rb["confidence"] < ra["confidence"]
    # Temperature scaling keeps the logit differences divided by T: recover them and compare.
    la = np.log([ra["scores"]["positive"] / ra["scores"]["negative"]])
    lb = np.log([rb["scores"]["positive"] / rb["scores"]["negative"]])
    assert lb == pytest.approx(la / 4.0, rel=1e-4)


def test_invalid_calibration_file_refuses_to_serve(make_settings: MakeSettings, tmp_path: Path) -> None:
    params = tmp_path / "calibration.json"
    params.write_text(json.dumps({"temperature": -1}))
    app = create_app(make_settings(CALIBRATION_PARAMS_PATH=str(params)))
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.FAILED
        error = client.get(c.Path.READYZ).json()["error"]
        assert error["code"] == "calibration_invalid"
        assert f"CALIBRATION_PARAMS_PATH={params}" in error["message"]


def test_a_feedback_database_that_cannot_be_opened_refuses_to_serve(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    db = tmp_path / "fb.sqlite3"
    db.write_bytes(b"not a database, but a file someone left here" * 100)
    refused: list[str] = []
    app = create_app(make_settings(FEEDBACK_DB_PATH=str(db)), on_fatal=refused.append)
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.FAILED
        error = client.get(c.Path.READYZ).json()["error"]
        assert error["code"] == "feedback_store_unavailable"
        assert error["message"].startswith("FEEDBACK_DB_PATH: cannot open the feedback database")
        assert client.post(c.Path.INFER, json={"text": "great"}).status_code == 503
    assert refused == [error["message"]]
    assert db.read_bytes().startswith(b"not a database")  # left as it was


def test_rate_limits_per_endpoint_with_batch_separate(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(RATE_LIMIT_INFER_PER_SECOND="0.01", RATE_LIMIT_BATCH_PER_SECOND="0.01"))
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY
        assert client.post(c.Path.INFER, json={"text": "great"}).status_code == 200  # the burst of 1
        r = client.post(c.Path.INFER, json={"text": "great"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        # The batch endpoint has its own bucket, untouched by /infer's.
        assert client.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}]}).status_code == 200
        assert client.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}]}).status_code == 429
        # Health and metrics are never limited.
        assert client.get(c.Path.READYZ).status_code == 200


def test_disabled_features_are_not_routed(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(ENABLE_BATCH="false", enable_explainability="false"))
    client = TestClient(app)
    assert client.post(c.Path.INFER_BATCH, json={"items": [{"text": "a"}]}).status_code == 404
    assert client.post(c.Path.EXPLAIN, json={"text": "a"}).status_code == 404
    assert c.Path.INFER_BATCH not in client.get("/openapi.json").json()["paths"]


def test_sigterm_drains_requests_in_flight_over_real_http(make_settings: MakeSettings) -> None:
    """A real uvicorn server: requests whose bodies are still arriving when the signal comes finish with
    200, /readyz turns 503 at once, and the server then stops by itself."""
    settings = make_settings(HOST="127.0.0.1", SHUTDOWN_GRACE_SECONDS="30")
    app = create_app(settings)
    server = build_server(settings, app, port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_phase(app) is Phase.READY
    wait_until(lambda: server.started, "uvicorn listens")
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    release = threading.Event()

    def slow_body(i: int):  # type: ignore[no-untyped-def]
        yield b'{"text": "great'
        release.wait(30)
        yield f' film {i}"}}'.encode()

    def post(i: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(
                f"{base}{c.Path.INFER}", content=slow_body(i), headers={"content-type": "application/json"}
            )

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, i) for i in range(4)]
        # all four accepted, bodies half sent
        wait_until(lambda: app.state.ctx.state.in_flight >= 4, "four requests are in flight")
        server.handle_exit(signal.SIGTERM, None)
        assert app.state.ctx.state.phase is Phase.DRAINING
        release.set()
        answers = [f.result(timeout=60) for f in futures]
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert [r.status_code for r in answers] == [200] * 4
    assert all(r.json()["label"] == "positive" for r in answers)


async def test_batcher_stopped_means_503_draining(make_settings: MakeSettings) -> None:
    app = create_app(make_settings())
    async with serving(app) as client:
        await app.state.ctx.state.engine.batcher.stop()
        r = await client.post(c.Path.INFER, json={"text": "great"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"


async def test_serving_helper_runs_a_whole_lifespan(make_settings: MakeSettings) -> None:
    async with serving(create_app(make_settings())) as client:
        assert (await client.post(c.Path.INFER, json={"text": "great"})).json()["label"] == "positive"


def test_a_model_directory_that_is_not_a_classifier_fails_cleanly(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    fatal: list[str] = []
    app = create_app(make_settings(MODEL_PATH=str(broken)), on_fatal=fatal.append)
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.FAILED
        r = client.get(c.Path.READYZ)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
    assert len(fatal) == 1


async def test_forward_workers_default_to_one_per_thread_and_more_are_warned_about(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    # Straight on the module's logger, enabled and at WARNING: other apps in this process configure
    # logging (levels, handlers), which could otherwise hide the record from caplog.
    logger = logging.getLogger("inference_server.serving.lifecycle")
    was_disabled, logger.disabled = logger.disabled, False
    was_level = logger.level
    logger.setLevel(logging.WARNING)  # whatever LOG_LEVEL an earlier app left on the root logger
    logger.addHandler(caplog.handler)
    try:
        async with serving(create_app(make_settings(TORCH_THREADS="2"))) as client:
            ready = (await client.get(c.Path.READYZ)).json()
            assert (ready["torch_threads"], ready["forward_workers"]) == (2, 2)
        assert "FORWARD_WORKERS" not in caplog.text
        async with serving(create_app(make_settings(TORCH_THREADS="1", FORWARD_WORKERS="3"))) as client:
            ready = (await client.get(c.Path.READYZ)).json()
            assert (ready["torch_threads"], ready["forward_workers"]) == (1, 3)
            assert (await client.post(c.Path.INFER, json={"text": "great"})).status_code == 200
        assert "FORWARD_WORKERS=3 exceeds the 1 intra-op thread(s)" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
        logger.disabled = was_disabled
        logger.setLevel(was_level)
