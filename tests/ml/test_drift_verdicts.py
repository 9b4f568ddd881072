"""The drift verdicts docs/reports/drift.md documents, on the default model's real predictions: the
out-of-domain tweets score clearly above the default threshold (exit 1, Drift) and a fresh sample of
the in-domain Rotten Tomatoes test split clearly below it (exit 0, NoDrift), through the real
`sentiment-ml drift` command.

tests/ml/data/drift_{reference,rt_test,tweets}.jsonl hold the default model's (minilm-rt-361a49e0501ea6d5,
calibrated) label and confidence for the report's samples: 1000 of rotten_tomatoes:validation (seed 0),
1000 of rotten_tomatoes:test and 1000 of tweets:test (seed 1), sampled and scored as `drift --sample 1000`
does. Regenerate them (about a minute on 2 threads) with tests/ml/data/make_drift_predictions.py (its
docstring gives the command); a rebuilt default model needs new files and, if its figures move, a new
report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inference_server import contract

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[2]


def _drift(current: str, out: Path) -> tuple[int, dict[str, Any], str]:
    """`sentiment-ml drift` as a CronJob runs it (a process; its exit code is the verdict)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference_server.ml.cli",
            "drift",
            "--reference-predictions",
            str(DATA / "drift_reference.jsonl"),
            "--current-predictions",
            str(DATA / f"drift_{current}.jsonl"),
            "--output",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    result = json.loads(out.read_text()) if out.is_file() else {}
    return proc.returncode, result, proc.stderr


def test_the_prediction_files_are_the_documented_samples() -> None:
    for name in ("reference", "rt_test", "tweets"):
        rows = [json.loads(line) for line in (DATA / f"drift_{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 1000, name
        assert {r["label"] for r in rows} == {"negative", "positive"}, name
        assert all(0.5 <= r["confidence"] <= 1.0 for r in rows), name  # top label of two classes


@pytest.mark.parametrize(
    ("current", "exit_code", "verdict", "documented_score"),
    [("tweets", 1, "Drift", 0.777), ("rt_test", 0, "NoDrift", 0.030)],
)
def test_documented_verdicts_with_the_default_threshold(
    tmp_path: Path, current: str, exit_code: int, verdict: str, documented_score: float
) -> None:
    rc, result, stderr = _drift(current, tmp_path / "result.json")
    assert rc == exit_code, stderr
    assert f"drift: {verdict}:" in stderr
    metrics = result["metrics"]
    threshold = contract.DRIFT_THRESHOLD_DEFAULT
    assert metrics["threshold"] == threshold
    assert result["kind"] == contract.JobKind.DRIFT and result["detail"]["verdict"] == verdict
    score = metrics["drift_score"]
    if verdict == "Drift":
        assert score > 2 * threshold  # clearly above (the report: 5x)
    else:
        assert score < threshold / 2  # clearly below (the report: a fifth)
    # The figures the report gives for these very samples (docs/reports/drift.md, "Measured").
    assert score == pytest.approx(documented_score, abs=5e-4)
