"""Metric computations shared by every ML command (pure numpy, no I/O).

Conventions: ``y_true``/``y_pred`` are integer class indices into ``labels``; the confusion matrix
has true classes as rows and predicted classes as columns; probabilities are rows summing to 1.
ECE is the top-label expected calibration error over equal-width confidence bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DEFAULT_ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000


def _as_int(a: npt.ArrayLike) -> IntArray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> IntArray:
    t, p = _as_int(y_true), _as_int(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_scores(cm: IntArray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class; 0.0 where a ratio is undefined (sklearn's
    ``zero_division=0``), so a gold class the model never predicts drags macro-F1 down instead of
    vanishing from it (see `averaged_classes` for the classes the mean covers)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, label in enumerate(labels)
    }


def averaged_classes(cm: IntArray) -> npt.NDArray[np.bool_]:
    """The classes macro-F1 averages over: those in the gold labels or the predictions (sklearn's
    default, the union of both). A model label that is neither (a 3-label model on binary data) has
    no F1 to speak of; counting it as 0 capped such a model at 0.667 however right it was."""
    present: npt.NDArray[np.bool_] = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return present


def _mean_f1(scores: dict[str, dict[str, float]], present: npt.NDArray[np.bool_]) -> float:
    # np.mean over the same list as before when every class is present: binary figures stay bit-equal.
    f1 = [s["f1"] for s, keep in zip(scores.values(), present, strict=True) if keep]
    return float(np.mean(f1)) if f1 else 0.0


def macro_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> float:
    cm = confusion_matrix(y_true, y_pred, n_classes)
    scores = per_class_scores(cm, [str(i) for i in range(n_classes)])
    return _mean_f1(scores, averaged_classes(cm))


def macro_f1_interval(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    n_classes: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of macro-F1 over the rows: how far the figure could move on
    another sample of the same size. A 1276-row split gives about ±2 points at 95%, the size of the
    rollout gate's whole budget, which is why metrics.json carries it. Seeded: same rows, same interval."""
    t, p = _as_int(y_true), _as_int(y_pred)
    if t.size < 2:
        f1 = macro_f1(t, p, n_classes)
        return f1, f1
    rows = np.random.default_rng(seed).integers(0, t.size, size=(resamples, t.size))
    # One confusion matrix per resample in one bincount: cell index = resample·k² + true·k + predicted.
    cells = np.arange(resamples)[:, None] * n_classes**2 + t[rows] * n_classes + p[rows]
    k = n_classes
    cm = np.bincount(cells.ravel(), minlength=resamples * k * k).reshape(resamples, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    predicted, actual = cm.sum(axis=1).astype(np.float64), cm.sum(axis=2).astype(np.float64)
    # F1 = 2·tp / (predicted + actual), averaged over the classes each resample holds in gold or
    # predictions (denom > 0), as `macro_f1` does; every row adds to denom, so no resample is empty.
    denom = predicted + actual
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present).sum(axis=1) / present.sum(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(f1, [tail, 100 - tail])
    return float(lo), float(hi)


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    t, p = _as_int(y_true), _as_int(y_pred)
    return float(np.mean(t == p)) if t.size else 0.0


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def log_softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    out: FloatArray = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def nll_from_logits(logits: npt.ArrayLike, y_true: npt.ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class (computed in log space, so it stays finite
    for over-confident logits where softmax would round to 0)."""
    t = _as_int(y_true)
    lp = log_softmax(logits, temperature)
    return float(-lp[np.arange(t.size), t].mean()) if t.size else 0.0


def nll_from_probabilities(probs: npt.ArrayLike, y_true: npt.ArrayLike, eps: float = 1e-12) -> float:
    t = _as_int(y_true)
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.log(np.clip(p[np.arange(t.size), t], eps, 1.0)).mean()) if t.size else 0.0


def expected_calibration_error(
    probs: npt.ArrayLike, y_true: npt.ArrayLike, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    p = np.asarray(probs, dtype=np.float64)
    t = _as_int(y_true)
    if t.size == 0:
        return 0.0
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    # Bins are (lo, hi]; confidence is never below 1/C, so the first bin's open edge loses nothing.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    if not samples_ms:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "mean": 0.0, "max": 0.0}
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "count": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def classification_metrics(
    probs: npt.ArrayLike,
    y_true: npt.ArrayLike,
    labels: Sequence[str],
    *,
    n_bins: int = DEFAULT_ECE_BINS,
    nll: float | None = None,
) -> dict[str, Any]:
    """Every quality figure metrics.json carries, from class probabilities and true indices. ``nll``:
    computed by the caller from logits (`nll_from_logits`) when it has them; from the probabilities,
    floored at 1e-12, otherwise (lexicon baselines have no logits)."""
    p = np.asarray(probs, dtype=np.float64)
    t = _as_int(y_true)
    if p.ndim != 2 or p.shape[0] != t.size or p.shape[1] != len(labels):
        raise ValueError(
            f"probabilities of shape {p.shape} do not match {t.size} rows x {len(labels)} labels"
        )
    pred = p.argmax(axis=1)
    cm = confusion_matrix(t, pred, len(labels))
    per_class = per_class_scores(cm, labels)
    present = averaged_classes(cm)
    return {
        "rows": int(t.size),
        "macro_f1": _mean_f1(per_class, present),
        "macro_f1_classes": [label for label, keep in zip(labels, present, strict=True) if keep],
        "macro_f1_ci95": list(macro_f1_interval(t, pred, len(labels))),
        "accuracy": accuracy(t, pred),
        "ece": expected_calibration_error(p, t, n_bins),
        "nll": nll if nll is not None else nll_from_probabilities(p, t),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece_bins": n_bins,
    }
