"""`make demo` picks its model sensibly (the full run is exercised by `make demo` itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_server import demo


def test_model_env_uses_the_calibration_and_sha256_that_come_with_a_model(tmp_path: Path) -> None:
    model = tmp_path / "minilm-rt-abc"
    model.mkdir()
    assert demo.model_env(model) == {}
    (model / "calibration.json").write_text('{"temperature": 1.5}')
    (tmp_path / "minilm-rt-abc.sha256").write_text("ab" * 32 + "\n")
    assert demo.model_env(model) == {
        "CALIBRATION_PARAMS_PATH": str(model / "calibration.json"),
        "MODEL_SHA256": "ab" * 32,
    }


def test_falls_back_to_the_tiny_model_when_the_default_is_not_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setattr(demo, "_default_model", lambda: None)
    monkeypatch.setenv("SENTIMENT_CACHE", str(tmp_path))
    cached = tmp_path / "demo" / "tiny-model"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(tiny_model_dir, target_is_directory=True)  # already built: reused, not rebuilt
    assert demo.model_dir() == (cached, "tiny")
    monkeypatch.setattr(demo, "_default_model", lambda: tiny_model_dir)
    assert demo.model_dir() == (tiny_model_dir, "default")
