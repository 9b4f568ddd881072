"""The shared metric computations (inference_server.ml.metrics), checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score, log_loss, precision_recall_fscore_support

from inference_server.ml import metrics as M


def _random_case(seed: int, n: int = 400, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    y = rng.integers(0, c, size=n)
    return logits, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_figures_match_sklearn(seed: int) -> None:
    logits, y = _random_case(seed)
    probs = M.softmax(logits)
    pred = probs.argmax(axis=1)
    doc = M.classification_metrics(probs, y, ["a", "b", "c"])
    assert doc["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert doc["confusion_matrix"] == sk_confusion(y, pred, labels=[0, 1, 2]).tolist()
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for i, label in enumerate("abc"):
        assert doc["per_class"][label]["precision"] == pytest.approx(p[i])
        assert doc["per_class"][label]["recall"] == pytest.approx(r[i])
        assert doc["per_class"][label]["f1"] == pytest.approx(f[i])
        assert doc["per_class"][label]["support"] == s[i]
    assert doc["nll"] == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]))
    assert M.nll_from_logits(logits, y) == pytest.approx(doc["nll"])


def test_absent_class_counts_as_zero_f1() -> None:
    assert M.macro_f1([0, 0, 1, 1], [0, 0, 0, 0], 2) == pytest.approx((2 / 3 + 0) / 2)


def test_ece_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    # 10 rows at confidence 0.8, 8 of them right: perfectly calibrated.
    probs = np.array([[0.8, 0.2]] * 10)
    y = np.array([0] * 8 + [1] * 2)
    assert M.expected_calibration_error(probs, y) == pytest.approx(0.0)
    over = np.array([[0.99, 0.01]] * 10)
    assert M.expected_calibration_error(over, y) == pytest.approx(0.19)


def test_nll_from_logits_stays_finite_for_extreme_logits() -> None:
    logits = np.array([[1000.0, -1000.0]])
    assert np.isfinite(M.nll_from_logits(logits, [1]))
    assert M.nll_from_logits(logits, [1]) == pytest.approx(2000.0)


def test_temperature_flattens_probabilities() -> None:
    logits = np.array([[2.0, 0.0]])
    assert M.softmax(logits, 2.0)[0, 0] < M.softmax(logits)[0, 0]


def test_latency_summary_and_bad_shapes() -> None:
    s = M.latency_summary([1.0, 2.0, 3.0, 4.0])
    assert s["count"] == 4 and s["p50"] == pytest.approx(2.5) and s["max"] == 4.0
    assert M.latency_summary([])["count"] == 0
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError):
        M.classification_metrics(np.ones((3, 2)) / 2, [0, 1], ["a", "b"])


@pytest.mark.parametrize(("seed", "classes"), [(0, 2), (1, 3)])
def test_macro_f1_interval_is_the_percentile_bootstrap_of_macro_f1(seed: int, classes: int) -> None:
    """The vectorised interval equals the plain loop: resample rows, score each resample, take percentiles."""
    logits, y = _random_case(seed, n=300, c=classes)
    pred = logits.argmax(axis=1)
    rows = np.random.default_rng(7).integers(0, y.size, size=(200, y.size))
    scores = [M.macro_f1(y[r], pred[r], classes) for r in rows]
    expected = tuple(np.percentile(scores, [2.5, 97.5]))
    assert M.macro_f1_interval(y, pred, classes, resamples=200, seed=7) == pytest.approx(expected)


def test_macro_f1_interval_brackets_the_figure_and_narrows_with_more_rows() -> None:
    rng = np.random.default_rng(3)

    def case(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n)
        return y, np.where(rng.random(n) < 0.83, y, 1 - y)  # 83% right

    y, pred = case(400)
    low, high = M.macro_f1_interval(y, pred, 2)
    assert low < M.macro_f1(y, pred, 2) < high
    assert M.macro_f1_interval(y, pred, 2) == (low, high)  # seeded
    big_y, big_pred = case(4000)
    big_low, big_high = M.macro_f1_interval(big_y, big_pred, 2)
    assert big_high - big_low < (high - low) / 2  # ten times the rows: about a third of the width
    assert M.macro_f1_interval([1], [0], 2) == (0.0, 0.0)  # one row: nothing to resample
    doc = M.classification_metrics(np.eye(2)[pred], y, ["a", "b"])
    assert doc["macro_f1_ci95"] == [low, high]


def test_macro_f1_averages_over_the_classes_in_gold_or_predictions() -> None:
    """A 3-label model scored on binary data: the label neither in gold nor predicted is left out of
    the mean (sklearn's default), instead of capping a perfect model at 0.667."""
    y = np.array([0] * 5 + [2] * 5)
    probs = np.array([[0.9, 0.05, 0.05]] * 5 + [[0.05, 0.05, 0.9]] * 5)
    doc = M.classification_metrics(probs, y, ["negative", "neutral", "positive"])
    assert doc["macro_f1"] == 1.0 and doc["macro_f1_ci95"] == [1.0, 1.0]
    assert doc["macro_f1_classes"] == ["negative", "positive"]
    assert doc["per_class"]["neutral"]["support"] == 0  # still reported, just not averaged
    assert M.macro_f1(y, probs.argmax(axis=1), 3) == 1.0
    # A label the model predicts wrongly is in the union and scores 0, as in sklearn.
    pred = np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    assert M.macro_f1(y, pred, 3) == pytest.approx(f1_score(y, pred, average="macro"))
    doc = M.classification_metrics(np.eye(3)[pred], y, ["a", "b", "c"])
    assert doc["macro_f1_classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_macro_f1_and_interval_are_bit_for_bit_unchanged(seed: int) -> None:
    """Both classes present: the figures equal the old mean over every label exactly (reports and
    gates compare them), point estimate and bootstrap alike."""
    logits, y = _random_case(seed, n=300, c=2)
    pred = logits.argmax(axis=1)
    doc = M.classification_metrics(M.softmax(logits), y, ["negative", "positive"])
    assert doc["macro_f1"] == float(np.mean([s["f1"] for s in doc["per_class"].values()]))
    assert doc["macro_f1_classes"] == ["negative", "positive"]
    # The old vectorised bootstrap: F1 per class, mean over all classes.
    rows = np.random.default_rng(0).integers(0, y.size, size=(M.BOOTSTRAP_RESAMPLES, y.size))
    cells = np.arange(M.BOOTSTRAP_RESAMPLES)[:, None] * 4 + y[rows] * 2 + pred[rows]
    cm = np.bincount(cells.ravel(), minlength=M.BOOTSTRAP_RESAMPLES * 4).reshape(-1, 2, 2)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    denom = (cm.sum(axis=1) + cm.sum(axis=2)).astype(np.float64)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean(axis=1)
    assert doc["macro_f1_ci95"] == [float(x) for x in np.percentile(f1, [2.5, 97.5])]
