"""The server under enable_quantized_model: ONNX Runtime INT8 by default, torch INT8 on request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.main import EXIT_CONFIG, main
from inference_server.runtime.onnx_int8 import OrtClassifier
from inference_server.serving.lifecycle import Phase
from inference_server.settings import ConfigError, ServerSettings, load_settings

from .conftest import Spans, wait_phase

MakeSettings = Callable[..., ServerSettings]
TEXTS = ["great", "awful", "i love this excellent film", "terrible boring plot"]


def test_quantized_server_serves_onnxruntime_int8_by_default(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    spans = Spans()
    settings = make_settings(enable_quantized_model="true", ONNX_CACHE_DIR=str(tmp_path / "onnx"))
    assert settings.int8_backend == "onnxruntime"
    app = create_app(settings, tracer_provider=spans.provider)
    with TestClient(app) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        assert client.get(c.Path.READYZ).json()["quantized"] is True
        assert isinstance(app.state.ctx.state.engine.model.model, OrtClassifier)
        answers = [client.post(c.Path.INFER, json={"text": t}).json() for t in TEXTS]
        assert [a["label"] for a in answers] == ["positive", "negative", "positive", "negative"]
        batch = client.post(c.Path.INFER_BATCH, json={"items": [{"text": t} for t in TEXTS]}).json()
        assert [r["label"] for r in batch["results"]] == [a["label"] for a in answers]
        # Saliency runs on the fp32 torch weights kept for it, not on the ONNX session.
        assert client.post(c.Path.EXPLAIN, json={"text": "great film"}).status_code == 200
        metrics = client.get(c.Path.METRICS).text
    assert 'quantized="true"' in metrics
    assert list((tmp_path / "onnx").glob("int8-*.onnx"))  # built into the configured cache directory
    load = [s for s in spans.exporter.get_finished_spans() if s.name == c.Span.MODEL_LOAD]
    attributes = load[0].attributes if load else None
    assert attributes is not None and attributes["model.int8_backend"] == "onnxruntime"


@pytest.mark.parametrize("value", ["tensorrt", "1"])
def test_bad_int8_backend_stops_start_up_naming_the_variable(
    tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="INT8_BACKEND"):
        load_settings({"MODEL_PATH": str(tmp_path), "INT8_BACKEND": value})
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    monkeypatch.setenv("INT8_BACKEND", value)
    assert main([]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith("sentiment-server: invalid configuration: INT8_BACKEND")


def test_onnx_cache_dir_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="ONNX_CACHE_DIR"):
        load_settings({"MODEL_PATH": str(tmp_path), "ONNX_CACHE_DIR": str(tmp_path / "f")})
    assert load_settings({"MODEL_PATH": str(tmp_path), "INT8_BACKEND": "Torch"}).int8_backend == "torch"
