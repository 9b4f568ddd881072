"""The metrics a new pod exports before any traffic: series that exist at 0, and no warm-up in them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.serving.engine import InferenceEngine
from inference_server.serving.lifecycle import Phase

from .conftest import serving, settings_for


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    for (sample, sample_labels), value in samples.items():
        if sample == name and set(labels.items()) <= sample_labels:
            return value
    return None


async def test_a_ready_pod_exports_its_label_series_at_zero_and_no_warm_up_passes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counter series appeared on first use, and Prometheus takes a new series' first sample as its start:
    # a new pod's first predictions and feedback were never seen by increase(). The warm-up's six
    # passes were counted as batches and forward passes no user sent.
    app = create_app(settings_for(tiny_model_dir, tmp_path, ENABLE_BATCH="1", enable_explainability="1"))
    # Every forward pass, with the server's phase when it ran: the warm-up must really run (not only go
    # uncounted) before READY, over a batch and over an input as long as MAX_TOKENS allows.
    passes: list[tuple[Phase, int, int]] = []
    real_forward = InferenceEngine._forward

    def spy(engine: InferenceEngine, batch: list[list[int]]) -> np.ndarray:
        passes.append((Phase(app.state.ctx.state.phase), len(batch), max(len(ids) for ids in batch)))
        return real_forward(engine, batch)

    monkeypatch.setattr(InferenceEngine, "_forward", spy)
    async with serving(app) as client:
        max_tokens = app.state.ctx.state.engine.model.max_tokens
        assert passes, "no forward pass before READY: the warm-up did not run"
        assert {phase for phase, _, _ in passes} == {Phase.WARMING}, passes
        assert max(rows for _, rows, _ in passes) > 1, passes  # a batched pass
        assert min(length for _, _, length in passes) <= 3, passes  # a short input alone or batched
        assert max(length for _, _, length in passes) == max_tokens, passes  # the longest input
        warm_passes = len(passes)
        at_ready = _samples((await client.get(c.Path.METRICS)).text)
        labels = app.state.ctx.state.engine.labels
        for label in labels:
            assert _value(at_ready, c.METRIC_PREDICTIONS_SERIES, label=label) == 0.0
            for predicted in labels:
                outcome = "correct" if label == predicted else "incorrect"
                assert (
                    _value(
                        at_ready, c.METRIC_FEEDBACK_SERIES, label=label, predicted=predicted, outcome=outcome
                    )
                    == 0.0
                )
        for endpoint in (c.Path.INFER, c.Path.INFER_BATCH, c.Path.EXPLAIN):  # every enabled endpoint
            assert _value(at_ready, f"{c.METRIC_INPUT_TOKENS}_count", endpoint=endpoint) == 0.0
        assert _value(at_ready, f"{c.METRIC_BATCH_SIZE}_count") == 0.0
        assert _value(at_ready, f"{c.METRIC_FORWARD_LATENCY}_count") == 0.0

        answer = (await client.post(c.Path.INFER, json={"text": "great film"})).json()
        after = _samples((await client.get(c.Path.METRICS)).text)
        assert _value(after, c.METRIC_PREDICTIONS_SERIES, label=answer["label"]) == 1.0
        assert _value(after, f"{c.METRIC_BATCH_SIZE}_count") == 1.0
        assert _value(after, f"{c.METRIC_FORWARD_LATENCY}_count") == 1.0
        assert [phase for phase, _, _ in passes[warm_passes:]] == [Phase.READY]  # the user's one pass
