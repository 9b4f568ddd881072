"""`sentiment-ml calibrate`: temperature fitting, its report, and refusing degenerate splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from inference_server.ml import calibrate
from inference_server.ml import metrics as M
from inference_server.ml.common import MLInputError
from inference_server.ml.datasets import Example, Source, write_dataset
from inference_server.ml.evaluate import DatasetRef
from inference_server.runtime import calibration as runtime_calibration
from inference_server.runtime.calibration import CalibrationError, CalibrationParams, probabilities
from inference_server.tiny_model import NEGATIVE_WORDS, POSITIVE_WORDS

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
    assert doc["at_bound"] is False


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


# --- NaN logits, the params file, and fits that are no calibration -----------------------------------
def test_nan_logits_are_refused_by_the_fit() -> None:
    logits, y = _overconfident(200, 2.0, seed=3)
    logits[7, 0] = np.nan
    with pytest.raises(MLInputError, match="NaN/inf logits for 1 of 200"):
        calibrate.fit(logits, y, 2, REF)
    held = logits.copy()
    logits[7, 0] = 0.0
    with pytest.raises(MLInputError, match="NaN/inf"):
        calibrate.fit(logits, y, 2, REF, (held, y, REF))


def test_cli_on_a_nan_model_writes_nothing_and_exits_2(
    tmp_path: Path, nan_model_dir: Path, tiny_data_root: Path, tiny_dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It wrote a params file with NaN figures (which the server's loader accepted), then crashed."""
    out, report = tmp_path / "cal.json", tmp_path / "report.json"
    assert _run("--model", str(nan_model_dir), "--data-dir", str(tiny_data_root), "--dataset", tiny_dataset,
                "--output", str(out), "--report", str(report)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("sentiment-ml calibrate: error: the model produced NaN")
    assert "Traceback" not in err and not out.exists() and not report.exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_the_servers_loader_refuses_non_finite_metrics(tmp_path: Path, value: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(f'{{"temperature": 0.49, "metrics": {{"ece_before": {value}, "ece_after": 0.1}}}}')
    with pytest.raises(CalibrationError, match="calibration metric 'ece_before' must be a finite number"):
        CalibrationParams.load(path)
    with pytest.raises(CalibrationError, match="finite"):
        CalibrationParams(temperature=1.0, metrics={"nll_after": float("nan")})


def test_params_are_saved_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []
    real = runtime_calibration.write_bytes_atomic

    def spy(path: Path, data: bytes) -> None:
        written.append(path)
        real(path, data)

    monkeypatch.setattr(runtime_calibration, "write_bytes_atomic", spy)
    path = tmp_path / "cal.json"
    params = CalibrationParams(temperature=1.5, metrics={"ece_before": 0.1})
    params.save(path)
    assert written == [path] and CalibrationParams.load(path) == params
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it


def test_a_split_without_errors_or_a_temperature_at_a_bound_is_flagged() -> None:
    """A split the model gets all right gave T=0.086 and a "perfect" ECE; a constant predictor ran the
    search into its bound (T=20). Both fits are kept, but the report and a warning say so."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 40 + [1] * 40)
    separable = np.zeros((80, 2))
    separable[np.arange(80), y] = 3 + rng.random(80)
    _, report = calibrate.fit(separable, y, 2, REF)
    assert report["temperature"] < 0.2 and report["at_bound"] is False
    assert "makes no errors on d/validation" in str(calibrate.fit_warning(report))

    constant = np.tile([1.0, 0.0], (80, 1))
    _, report = calibrate.fit(constant, y, 2, REF)
    assert report["temperature"] == pytest.approx(calibrate.T_BOUNDS[1], rel=0.01)
    assert report["at_bound"] is True
    assert "at the search bound" in str(calibrate.fit_warning(report))

    logits, y = _overconfident(600, 2.0, seed=1)
    _, report = calibrate.fit(logits, y, 2, REF)
    assert report["at_bound"] is False and calibrate.fit_warning(report) is None


def test_cli_warns_on_one_line_when_the_fit_split_has_no_errors(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    polar = [Example(f"p{i}{w}", f"{w} {'!' * i}", "positive") for i in range(3) for w in POSITIVE_WORDS]
    polar += [Example(f"n{i}{w}", f"{w} {'!' * i}", "negative") for i in range(3) for w in NEGATIVE_WORDS]
    write_dataset(tmp_path / "d", "easy", {"validation": polar}, Source("t", "0", "f"))
    out, report = tmp_path / "cal.json", tmp_path / "report.json"
    assert _run("--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--dataset", "easy",
                "--held-out-split", "none", "--output", str(out), "--report", str(report)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("sentiment-ml calibrate: warning: the model makes no errors")
    assert json.loads(report.read_text())["fitted_on"]["accuracy"] == 1.0
