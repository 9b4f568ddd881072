"""The metrics a new pod exports before any traffic: series that exist at 0, and no warm-up in them."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from inference_server import contract as c
from inference_server.app import create_app

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
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Counter series appeared on first use, and Prometheus takes a new series' first sample as its start:
    # a new pod's first predictions and feedback were never seen by increase(). The warm-up's six
    # passes were counted as batches and forward passes no user sent.
    app = create_app(settings_for(tiny_model_dir, tmp_path, ENABLE_BATCH="1", enable_explainability="1"))
    async with serving(app) as client:
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
