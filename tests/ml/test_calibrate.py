"""`sentiment-ml calibrate`: temperature fitting, its report, and refusing degenerate splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from inference_server.ml import calibrate
from inference_server.ml import metrics as M
from inference_server.ml.datasets import Example, Source, write_dataset
from inference_server.ml.evaluate import DatasetRef
from inference_server.runtime.calibration import CalibrationParams, probabilities

REF = DatasetRef("d", "validation", "s" * 64, "t" * 64, 0)


def _overconfident(n: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels were drawn from softmax(logits / true_t): the right temperature is true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 2)) * 4
    p = M.softmax(logits, true_t)
    y = (rng.random(n) < p[:, 1]).astype(np.int64)
    return logits, y


def test_fit_recovers_the_temperature_and_cuts_ece() -> None:
    logits, y = _overconfident(4000, 2.5, seed=0)
    t = calibrate.fit_temperature(logits, y)
    assert t == pytest.approx(2.5, rel=0.1)
    figures = calibrate.calibration_figures(logits, y, t)
    assert figures["nll_after"] < figures["nll_before"]
    assert figures["ece_reduction"] >= 0.3


def test_fit_returns_runtime_params_and_held_out_report() -> None:
    logits, y = _overconfident(600, 2.0, seed=1)
    h_logits, h_y = _overconfident(600, 2.0, seed=2)
    params, report = calibrate.fit(logits, y, 2, REF, (h_logits, h_y, REF))
    assert isinstance(params, CalibrationParams) and params.temperature == report["temperature"]
    assert params.fitted_on.startswith("d/validation@sha256:")
    assert report["held_out"]["ece_after"] < report["held_out"]["ece_before"]
    # The server's probabilities() with these params are exactly the calibrated softmax.
    assert np.allclose(probabilities(logits, params), M.softmax(logits, params.temperature))
    assert "| d/validation (0 rows) |" in calibrate.markdown_summary(report)


@pytest.mark.parametrize(
    ("y", "message"),
    [(np.zeros(200, dtype=np.int64), "degenerate"), (np.array([0, 1] * 5), "rows")],
)
def test_degenerate_splits_are_refused(y: np.ndarray, message: str) -> None:
    logits = np.random.default_rng(0).normal(size=(y.size, 2))
    with pytest.raises(calibrate.CalibrationDataError, match=message):
        calibrate.fit(logits, y, 2, REF)


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    calibrate.add_arguments(parser)
    return calibrate.run(parser.parse_args([*argv, "--no-progress"]))


def test_cli_writes_params_the_server_reads(tmp_path: Path, tiny_model_dir: Path, tiny_data_root: Path,
                                            tiny_dataset: str) -> None:
    out, report = tmp_path / "cal.json", tmp_path / "report.json"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--output", str(out), "--report", str(report)) == 0
    params = CalibrationParams.load(out)
    doc = json.loads(report.read_text())
    assert params.temperature == pytest.approx(doc["temperature"])
    assert doc["fitted_on"]["dataset"]["split"] == "validation"
    assert doc["held_out"]["dataset"]["split"] == "test"
    assert doc["fitted_on"]["nll_after"] <= doc["fitted_on"]["nll_before"] + 1e-9


def test_cli_on_a_one_class_split_fails_clearly(tmp_path: Path, tiny_model_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ex = [Example(str(i), f"great film {i}", "positive") for i in range(60)]
    write_dataset(tmp_path / "d", "onesided", {"validation": ex, "test": ex}, Source("t", "0", "f"))
    out = tmp_path / "cal.json"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--dataset", "onesided",
                "--output", str(out)) == 2
    assert "degenerate" in capsys.readouterr().err
    assert not out.exists()


def test_calibrating_on_an_evaluations_logits_equals_calibrating_from_the_texts(
    tiny_model_dir: Path, tiny_data_root: Path, tiny_dataset: str
) -> None:
    """`make model` fits on the logits its evaluation already computed: same temperature, same report."""
    from inference_server.ml.evaluate import evaluate, load_dataset_split
    from inference_server.runtime.model import load_model

    m = load_model(tiny_model_dir)
    fit_on = load_dataset_split(tiny_data_root, tiny_dataset, "validation")
    held = load_dataset_split(tiny_data_root, tiny_dataset, "test")
    direct = calibrate.calibrate_model(m, *fit_on, held_out=held, progress=False)
    reused = calibrate.calibrate_evaluations(
        m, evaluate(m, *fit_on, progress=False), held_out=evaluate(m, *held, progress=False)
    )
    assert reused == direct
    assert reused[1]["held_out"]["dataset"]["split"] == "test"
