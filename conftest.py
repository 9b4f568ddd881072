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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny, briefly trained classifier per test session (see inference_server.tiny_model)."""
    from inference_server.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
