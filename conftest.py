"""Fixtures shared by every test tree (tests/ and e2e/)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Tests share two cores with the servers and jobs they start; libgomp's spinning idle threads then
# stall every forward pass (see inference_server/main.py). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The INT8 ONNX models the tests build are cached per session, never in the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("onnx-cache")
        mp.setenv("ONNX_CACHE_DIR", str(path))
        yield path


def _leaked_variables() -> list[str]:
    """The contract's environment variables (and the ML registry's) that the caller's shell may hold: a
    pod's MODEL_PATH, CALIBRATION_PARAMS_PATH or DRIFT_THRESHOLD silently became the default of the
    commands under test. ONNX_CACHE_DIR is the session's own (above); a test that wants one sets it."""
    from inference_server.contract import Env
    from inference_server.ml.registry import REGISTRY_ENV

    return [str(name) for name in Env if name is not Env.ONNX_CACHE_DIR] + [REGISTRY_ENV]


@pytest.fixture(scope="session", autouse=True)
def _no_deployment_environment_for_the_session() -> Iterator[None]:
    """Cleared before any session or module fixture builds settings or apps from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _leaked_variables():
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def _no_deployment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """... and again for each test, in case an earlier test or fixture set one without monkeypatch."""
    for name in _leaked_variables():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny, briefly trained classifier per test session (see inference_server.tiny_model)."""
    from inference_server.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
