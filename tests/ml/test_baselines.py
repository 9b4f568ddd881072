"""The VADER baseline's label mapping, and the docs that describe it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference_server.ml import baselines


def test_vader_compound_zero_is_negative_as_the_docs_say() -> None:
    """argmax of [1-p, p] takes the first column on the tie at compound 0: negative. The docs said
    "compound ≥ 0 → positive"; docs/reports/baselines.json was measured as coded, so the docs change."""
    probs = baselines.vader_probabilities([-0.5, 0.0, 1e-4, 0.9])
    assert probs.argmax(axis=1).tolist() == [0, 0, 1, 1]
    assert np.allclose(probs.sum(axis=1), 1.0)
    docs = (Path(__file__).parents[2] / "docs" / "model-selection.md").read_text()
    assert "compound score > 0 → positive" in docs and "≥ 0 → positive" not in docs
    assert ">= 0" not in (baselines.__doc__ or "") and "compound > 0" in (baselines.__doc__ or "")
