"""`sentiment-ml drift`: how far the current window of predictions has moved from a reference.

Three statistics, each on a scale where ~0.1 is a moderate and >=0.25 a major shift:
- PSI over predicted-label shares,
- PSI over confidence binned with contract.CONFIDENCE_BUCKETS (the server's histogram buckets),
- the Kolmogorov-Smirnov statistic D on confidence (exact on raw samples; on binned Prometheus data
  it is the largest CDF gap at the bucket edges, a lower bound of the exact D).
drift_score is the largest of the three, so any one kind of shift is enough to flag drift.

A window comes from a dataset scored by the model, from a predictions JSONL file (`label`,
`confidence` per line, as `reprocess` writes), or from the serving model's Prometheus series
(`increase(...[window])` of the confidence histogram and the predictions counter).
The statistics and the PromQL are pure functions; reading files, the model and Prometheus is the shell.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_server.contract import (
    CONFIDENCE_BUCKETS,
    DRIFT_THRESHOLD_DEFAULT,
    DRIFT_THRESHOLD_MAX,
    LABEL_LABEL,
    LABEL_MODEL_VERSION,
    METRIC_CONFIDENCE,
    METRIC_PREDICTIONS_SERIES,
    Env,
    JobKind,
    JobOutcome,
    JobResult,
)
from inference_server.ml.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    MLInputError,
    add_data_dir_argument,
    add_model_arguments,
    check_output_file,
    cli_error,
    load_model_of,
    model_version_of,
)

# From measurements with the default model (docs/reports/drift.md): a fresh in-domain sample scores
# 0.030, the out-of-domain tweets 0.777. 0.15 is 5x the in-domain figure and above the 99.9% KS
# critical value for 1000-vs-1000 samples (0.087), while a label-share swing of ~20 points trips it.
DEFAULT_THRESHOLD = DRIFT_THRESHOLD_DEFAULT
# Below ~200 predictions sampling noise alone can cross 0.15 (KS 99% critical value at 200 vs 1000
# samples is 0.126; at 50 it is 0.23), so smaller windows are NoData, not a verdict.
DEFAULT_MIN_SAMPLES = 200
# Exit codes: 1 means "drift" to a CronJob or script, so it is reserved for a real drift verdict; every
# failure (bad input, unreachable Prometheus, an unexpected error) is EXIT_BAD_INPUT, nothing decided.
EXIT_DRIFT = 1
EXIT_NO_DATA = 3
# Shares below this are floored before the log in PSI; an empty bin then costs a bounded amount
# instead of infinity, and two windows that both leave a bin empty contribute nothing.
PSI_EPSILON = 1e-4
# Upper bounds of the confidence bins: the contract's buckets plus Prometheus' implicit +Inf.
BIN_UPPER_BOUNDS: tuple[float, ...] = (*CONFIDENCE_BUCKETS, math.inf)

FloatArray = npt.NDArray[np.float64]


class DriftInputError(ValueError):
    """An input window cannot be read or does not have the expected shape."""


class PrometheusError(RuntimeError):
    """Prometheus could not be queried or answered something other than an instant vector."""


# --- windows and statistics (pure) ---------------------------------------------------------------
@dataclass(frozen=True)
class PredictionWindow:
    """What drift needs from a window: label counts, binned confidence and, when known, raw confidence."""

    label_counts: Mapping[str, float]
    confidence_bins: tuple[float, ...]  # counts per BIN_UPPER_BOUNDS bin
    confidences: tuple[float, ...] | None = None  # raw samples (files, datasets); None from Prometheus
    source: str = ""

    @property
    def samples(self) -> float:
        return float(sum(self.confidence_bins))

    def label_shares(self) -> dict[str, float]:
        total = sum(self.label_counts.values())
        return {k: (v / total if total else 0.0) for k, v in sorted(self.label_counts.items())}

    def summary(self) -> dict[str, Any]:
        total = self.samples
        return {
            "source": self.source,
            "samples": total,
            "label_shares": self.label_shares(),
            "confidence_bin_shares": [c / total if total else 0.0 for c in self.confidence_bins],
        }


def bin_confidences(confidences: Sequence[float]) -> tuple[float, ...]:
    """Counts per bin with Prometheus `le` semantics: bin i holds upper[i-1] < c <= upper[i]."""
    c = np.asarray(confidences, dtype=np.float64)
    if c.size and (np.isnan(c).any() or c.min() < 0.0 or c.max() > 1.0):
        raise DriftInputError("confidence values must lie in [0, 1]")
    idx = np.searchsorted(np.asarray(CONFIDENCE_BUCKETS), c, side="left")
    counts = np.bincount(idx, minlength=len(BIN_UPPER_BOUNDS))
    return tuple(float(x) for x in counts)


def window_from_predictions(
    labels: Sequence[str], confidences: Sequence[float], *, source: str = ""
) -> PredictionWindow:
    if len(labels) != len(confidences):
        raise DriftInputError(f"{len(labels)} labels but {len(confidences)} confidences")
    return PredictionWindow(
        label_counts=dict(Counter(str(label) for label in labels)),
        confidence_bins=bin_confidences(confidences),
        confidences=tuple(float(c) for c in confidences),
        source=source,
    )


def psi(expected: Sequence[float], actual: Sequence[float], *, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index between two count (or share) vectors over the same bins."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"PSI needs two vectors over the same bins, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs at least one observation in each window")
    pe = np.maximum(e / e.sum(), epsilon)
    pa = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def ks_binned(expected: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    """KS D between two binned samples (largest CDF gap at the bin edges) and its asymptotic p-value."""
    from scipy.stats import kstwobign

    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    n, m = e.sum(), a.sum()
    if n <= 0 or m <= 0:
        raise ValueError("KS needs at least one observation in each window")
    d = float(np.max(np.abs(np.cumsum(e) / n - np.cumsum(a) / m)))
    en = n * m / (n + m)
    return d, float(kstwobign.sf(math.sqrt(en) * d))


def ks_samples(expected: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    res = ks_2samp(np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64))
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class DriftReport:
    verdict: str  # "Drift" | "NoDrift" | "NoData"
    threshold: float
    drift_score: float | None
    statistics: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def drifted(self) -> bool:
        return self.verdict == "Drift"


def no_data_reason(reference: PredictionWindow, current: PredictionWindow, min_samples: int) -> str | None:
    """Why the windows cannot be compared, or None. The statistics need at least one observation on
    each side in both the histogram and the label counts; Prometheus can return one without the
    other (a scrape gap, a counter reset), which is missing data, not drift."""
    need = max(min_samples, 1)
    if reference.samples < need or current.samples < need:
        return (
            f"too few predictions to judge drift: reference {reference.samples:.0f}, current "
            f"{current.samples:.0f}, need at least {need} in each"
        )
    for name, w in (("reference", reference), ("current", current)):
        if sum(w.label_counts.values()) <= 0:
            return (
                f"the {name} window has {w.samples:.0f} confidence observations but no predicted-label "
                "counts: the predictions counter is missing for it"
            )
    return None


def label_mismatch(reference: PredictionWindow, current: PredictionWindow) -> str | None:
    """Windows whose predicted labels have nothing in common are not one model's predictions (labels
    renamed, or another model's series): PSI over them is enormous and means nothing."""
    ref, cur = set(reference.label_counts), set(current.label_counts)
    if ref and cur and not ref & cur:
        return (
            f"the windows share no predicted label (reference {sorted(ref)}, current {sorted(cur)}): "
            "compare predictions of the same model's labels"
        )
    return None


def compare_windows(
    reference: PredictionWindow,
    current: PredictionWindow,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> DriftReport:
    """The drift decision. Too few samples in either window is its own verdict, never a pass."""
    no_data = no_data_reason(reference, current, min_samples)
    if no_data is not None:
        return DriftReport(verdict="NoData", threshold=threshold, drift_score=None, message=no_data)
    labels = sorted(set(reference.label_counts) | set(current.label_counts))
    psi_labels = psi(
        [reference.label_counts.get(k, 0.0) for k in labels],
        [current.label_counts.get(k, 0.0) for k in labels],
    )
    psi_conf = psi(reference.confidence_bins, current.confidence_bins)
    if reference.confidences is not None and current.confidences is not None:
        ks_d, ks_p = ks_samples(reference.confidences, current.confidences)
        ks_method = 1.0
    else:
        ks_d, ks_p = ks_binned(reference.confidence_bins, current.confidence_bins)
        ks_method = 0.0
    score = max(psi_labels, psi_conf, ks_d)
    drifted = score > threshold
    worst = max(
        (("psi_labels", psi_labels), ("psi_confidence", psi_conf), ("ks_statistic", ks_d)),
        key=lambda kv: kv[1],
    )
    return DriftReport(
        verdict="Drift" if drifted else "NoDrift",
        threshold=threshold,
        drift_score=score,
        statistics={
            "psi_labels": psi_labels,
            "psi_confidence": psi_conf,
            "ks_statistic": ks_d,
            "ks_pvalue": ks_p,
            "ks_exact": ks_method,
        },
        message=(f"drift_score {score:.4f} ({worst[0]}) {'>' if drifted else '<='} threshold {threshold}"),
    )


def to_job_result(
    report: DriftReport,
    reference: PredictionWindow,
    current: PredictionWindow,
    *,
    model_version: str,
    now: datetime,
) -> JobResult:
    metrics = {
        "threshold": report.threshold,
        "reference_samples": reference.samples,
        "current_samples": current.samples,
        **report.statistics,
    }
    if report.drift_score is not None:
        metrics["drift_score"] = report.drift_score
    return JobResult(
        kind=JobKind.DRIFT,
        outcome=JobOutcome.SUCCEEDED,
        model_version=model_version,
        finished_at=now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        metrics=metrics,
        detail={
            "verdict": report.verdict,
            "drifted": report.drifted,
            "reference": reference.summary(),
            "current": current.summary(),
            "bin_upper_bounds": [b if math.isfinite(b) else "+Inf" for b in BIN_UPPER_BOUNDS],
        },
        message=report.message,
    )


# --- Prometheus: PromQL and parsing (pure) -------------------------------------------------------
# Prometheus parses units largest first, each at most once ("1h30m", not "30m1h"); the CRDs take Go
# durations (spec.drift.window: "1h30m", "1.5h", "90s", "30m1h"), which PromQL cannot read in general, so
# such a window is rewritten in whole milliseconds. ASCII digits only: `\d` would take "١h".
_PROMETHEUS_DURATION = re.compile(
    r"(?=[0-9])(?:[0-9]+y)?(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?"
)
_GO_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_UNIT_MS |= {"d": 24 * _UNIT_MS["h"], "w": 7 * 24 * _UNIT_MS["h"], "y": 365 * 24 * _UNIT_MS["h"]}


def duration_ms(value: str, what: str) -> int:
    """``value`` (a Prometheus or a Go duration) in whole milliseconds, at least one."""
    if not (_PROMETHEUS_DURATION.fullmatch(value) or _GO_DURATION.fullmatch(value)):
        raise DriftInputError(f"{what} {value!r} is not a duration such as 1h, 30m, 7d or 1h30m")
    ms = round(sum(float(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value)))
    if ms < 1:
        raise DriftInputError(f"{what} {value!r} is shorter than a millisecond; give one such as 1h")
    return ms


def _check_duration(value: str, what: str) -> str:
    """A PromQL range for ``value``: a Prometheus duration as it is, a Go duration in milliseconds."""
    ms = duration_ms(value, what)
    return value if _PROMETHEUS_DURATION.fullmatch(value) else f"{ms}ms"


def check_windows_apart(window: str, offset: str) -> None:
    """The reference window must end where the current one begins, or before: overlapping windows share
    their data, and drift is then measured partly against itself."""
    if duration_ms(offset, "--reference-offset") < duration_ms(window, "--window"):
        raise DriftInputError(
            f"--reference-offset {offset} is shorter than --window {window}: the two windows would overlap; "
            "give an offset at least as long as the window (e.g. 7d)"
        )


def _label_value(value: str) -> str:
    # PromQL string literals use Go escaping; a version with a quote or backslash must not end it.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _range(window: str, offset: str | None) -> str:
    rng = f"[{_check_duration(window, 'window')}]"
    return f"{rng} offset {_check_duration(offset, 'offset')}" if offset else rng


def _confidence_selector(model_version: str) -> str:
    return f'{METRIC_CONFIDENCE}_bucket{{{LABEL_MODEL_VERSION}="{_label_value(model_version)}"}}'


def confidence_query(model_version: str, window: str, offset: str | None = None) -> str:
    return f"sum by (le) (increase({_confidence_selector(model_version)}{_range(window, offset)}))"


def series_query(model_version: str, window: str) -> str:
    """How many confidence series the version has had within the window: none means nothing serving
    this version was scraped (a wrong version, or no scraping), unlike a window without traffic."""
    return f"count(last_over_time({_confidence_selector(model_version)}{_range(window, None)}))"


def predictions_query(model_version: str, window: str, offset: str | None = None) -> str:
    sel = f'{METRIC_PREDICTIONS_SERIES}{{{LABEL_MODEL_VERSION}="{_label_value(model_version)}"}}'
    return f"sum by ({LABEL_LABEL}) (increase({sel}{_range(window, offset)}))"


def parse_vector(payload: object) -> list[tuple[dict[str, str], float]]:
    """(labels, value) pairs of a Prometheus HTTP API instant-vector answer. The payload is whatever
    JSON the URL returned (a proxy or a wrong URL can answer a list or a string), so every level is
    checked before it is indexed."""
    if not isinstance(payload, Mapping):
        raise PrometheusError(f"expected a Prometheus API object, got JSON {type(payload).__name__}")
    if payload.get("status") != "success":
        raise PrometheusError(
            f"Prometheus answered {payload.get('status')!r}: "
            f"{payload.get('errorType', '')} {payload.get('error', '')}".strip()
        )
    if warnings := payload.get("warnings"):
        # A partial answer (a store or shard missing) would be judged as if it were the whole window.
        raise PrometheusError(f"Prometheus answered with warnings, so possibly partial data: {warnings}")
    data = payload.get("data") or {}
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, Mapping) else type(data).__name__
        raise PrometheusError(f"expected an instant vector, got resultType {kind!r}")
    result = data.get("result", [])
    if not isinstance(result, list):
        raise PrometheusError(f"expected a list of samples, got {type(result).__name__}")
    return [_sample_of(item) for item in result]


def _sample_of(item: object) -> tuple[dict[str, str], float]:
    try:
        metric = item.get("metric", {}) if isinstance(item, Mapping) else None
        if not isinstance(item, Mapping) or not isinstance(metric, Mapping):
            raise TypeError("a sample is an object with a metric object")
        value = float(item["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusError(f"malformed sample in Prometheus answer: {item!r}") from exc
    if math.isinf(value):  # NaN (no rate to extrapolate) counts as nothing; an infinite count is broken
        raise PrometheusError(f"infinite value in Prometheus answer: {item!r}")
    return {str(k): str(v) for k, v in metric.items()}, value


def bins_from_cumulative(samples: Sequence[tuple[dict[str, str], float]]) -> tuple[float, ...]:
    """Per-bin counts from cumulative `le` buckets (sum by (le) of increase(..._bucket[w])).

    increase() extrapolates each series on its own, so cumulative values can come back slightly
    non-monotonic; a running maximum restores monotonicity before differencing. No series at all
    (the model served nothing in the window) is an empty histogram, not an error.
    """
    if not samples:
        return tuple(0.0 for _ in BIN_UPPER_BOUNDS)
    by_le: dict[float, float] = {}
    for labels, value in samples:
        if "le" not in labels:
            raise PrometheusError(f"histogram sample without an 'le' label: {labels}")
        # Summed: one bound can come spelled two ways ("1" and "1.0") across a scrape-format change.
        bound = float(labels["le"])
        by_le[bound] = by_le.get(bound, 0.0) + (0.0 if math.isnan(value) else value)
    expected = set(BIN_UPPER_BOUNDS)
    if set(by_le) != expected:
        raise PrometheusError(
            f"confidence histogram buckets {sorted(by_le)} differ from the contract's "
            f"{sorted(expected)}: is the server built from the same contract?"
        )
    cumulative = np.maximum.accumulate(np.array([by_le[b] for b in BIN_UPPER_BOUNDS]).clip(min=0.0))
    return tuple(float(x) for x in np.diff(cumulative, prepend=0.0))


def label_counts_from_vector(samples: Sequence[tuple[dict[str, str], float]]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for labels, value in samples:
        if LABEL_LABEL not in labels:
            raise PrometheusError(f"prediction counter sample without a '{LABEL_LABEL}' label: {labels}")
        if not math.isnan(value) and value > 0:
            counts[labels[LABEL_LABEL]] = counts.get(labels[LABEL_LABEL], 0.0) + value
    return counts


def window_from_prometheus_answers(
    confidence_payload: object, predictions_payload: object, *, source: str
) -> PredictionWindow:
    return PredictionWindow(
        label_counts=label_counts_from_vector(parse_vector(predictions_payload)),
        confidence_bins=bins_from_cumulative(parse_vector(confidence_payload)),
        confidences=None,
        source=source,
    )


# --- the shell: reading windows --------------------------------------------------------------------
def query_prometheus(url: str, query: str, *, timeout: float = 30.0) -> object:
    """The decoded JSON answer, unchecked: parse_vector checks its shape."""
    import httpx

    endpoint = url.rstrip("/") + "/api/v1/query"
    try:
        resp = httpx.get(endpoint, params={"query": query}, timeout=timeout)
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any request is made
        raise PrometheusError(f"--prometheus-url {url!r} is not a valid URL: {exc}") from exc
    except httpx.HTTPError as exc:
        raise PrometheusError(f"cannot reach Prometheus at {endpoint}: {exc}") from exc
    try:
        payload: object = resp.json()
    except ValueError as exc:
        raise PrometheusError(f"Prometheus at {endpoint} answered HTTP {resp.status_code}, not JSON") from exc
    return payload


def window_from_prometheus(
    url: str, model_version: str, window: str, offset: str | None = None
) -> PredictionWindow:
    conf = query_prometheus(url, confidence_query(model_version, window, offset))
    preds = query_prometheus(url, predictions_query(model_version, window, offset))
    where = f"prometheus {model_version} [{window}]" + (f" offset {offset}" if offset else "")
    if (
        offset is None
        and not parse_vector(conf)
        and not parse_vector(query_prometheus(url, series_query(model_version, window)))
    ):
        # The current window: a version that did not exist a week ago is a reference without data
        # (hold), but one with no series now is a misconfiguration that would hold forever.
        raise PrometheusError(
            f"Prometheus has no {METRIC_CONFIDENCE} series for {LABEL_MODEL_VERSION}={model_version!r} in "
            f"the last {window}: check the version (--model-version or ${Env.MODEL_VERSION}) and that "
            "Prometheus scrapes the serving pods"
        )
    return window_from_prometheus_answers(conf, preds, source=where)


def read_predictions_jsonl(path: Path) -> PredictionWindow:
    labels: list[str] = []
    confidences: list[float] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DriftInputError(f"cannot read predictions file {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            labels.append(str(rec["label"]))
            confidences.append(float(rec["confidence"]))
            if not 0.0 <= confidences[-1] <= 1.0:  # also refuses NaN, which json.loads accepts
                raise ValueError(f"confidence {rec['confidence']!r} is not within [0, 1]")
        except (ValueError, KeyError, TypeError) as exc:
            raise DriftInputError(
                f"{path}:{n}: each line must be a JSON object with 'label' and a 'confidence' in [0, 1]"
            ) from exc
    return window_from_predictions(labels, confidences, source=str(path))


def _sample(texts: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or n >= len(texts):
        return texts
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(texts), size=n, replace=False).tolist())
    return [texts[i] for i in idx]


def load_texts(spec: str, data_dir: Path | None = None) -> list[str]:
    """Texts of a dataset: `NAME:SPLIT` from the project's datasets, or a JSONL file with `text`."""
    path = Path(spec)
    if path.suffix == ".jsonl" or path.exists():
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return [str(r["text"]) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DriftInputError(
                f"{spec}: expected a JSONL file with a 'text' field per line ({exc})"
            ) from exc
    if ":" not in spec:
        raise DriftInputError(
            f"dataset {spec!r}: give NAME:SPLIT (e.g. rotten_tomatoes:test) or a .jsonl path"
        )
    from inference_server.ml import datasets

    name, split = spec.split(":", 1)
    return [e.text for e in datasets.load_split(data_dir or datasets.default_data_root(), name, split)]


def score_texts(model: Any, texts: Sequence[str], *, calibration: Any, source: str) -> PredictionWindow:
    from tqdm import tqdm

    from inference_server.runtime.calibration import probabilities
    from inference_server.runtime.model import predict_logits

    batch = 64
    parts = []
    for start in tqdm(range(0, len(texts), batch), desc=f"scoring {source}", unit="batch", file=sys.stderr):
        parts.append(predict_logits(model, texts[start : start + batch]))
    logits = np.concatenate(parts) if parts else np.zeros((0, len(model.labels)))
    probs = probabilities(logits, calibration)
    pred = probs.argmax(axis=1)
    return window_from_predictions([model.labels[i] for i in pred], probs.max(axis=1).tolist(), source=source)


# --- CLI -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    ref = parser.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference-dataset", metavar="NAME:SPLIT|FILE.jsonl", help="texts the model scores")
    ref.add_argument(
        "--reference-predictions", type=Path, metavar="FILE.jsonl", help="label+confidence lines"
    )
    ref.add_argument(
        "--reference-offset",
        metavar="DURATION",
        help="reference = the same Prometheus window this long ago (e.g. 7d); needs --prometheus-url",
    )
    cur = parser.add_mutually_exclusive_group(required=True)
    cur.add_argument("--current-dataset", metavar="NAME:SPLIT|FILE.jsonl")
    cur.add_argument("--current-predictions", type=Path, metavar="FILE.jsonl")
    cur.add_argument("--prometheus-url", help="current window from the serving model's metrics")
    add_data_dir_argument(parser)
    parser.add_argument("--window", default="1h", help="Prometheus window, e.g. 1h (default 1h)")
    add_model_arguments(parser)
    parser.add_argument(
        "--sample", type=int, default=None, help="score a random sample of N texts per dataset"
    )
    parser.add_argument("--reference-seed", type=int, default=0)
    parser.add_argument("--current-seed", type=int, default=1)
    # No env default here: the parser is built for every subcommand, so converting a bad
    # DRIFT_THRESHOLD at this point broke them all; run() resolves it (resolve_threshold).
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"drift when drift_score exceeds it (default: ${Env.DRIFT_THRESHOLD}, else {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES)
    parser.add_argument("--output", type=Path, help="write the JobResult JSON here (default: stdout)")
    parser.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 on drift or no data too (a CronJob's result is the JobResult, not the exit code); "
        "otherwise 1 = drift, 3 = too few samples; 2 = an error, never a verdict",
    )


def resolve_threshold(flag: float | None, env: Mapping[str, str]) -> float:
    """--threshold, else $DRIFT_THRESHOLD, else the default; finite and positive (an infinite or NaN
    threshold would make every window NoDrift)."""
    if flag is not None:
        value, where = flag, "--threshold"
    elif env.get(Env.DRIFT_THRESHOLD):
        raw = env[Env.DRIFT_THRESHOLD]
        where = f"{Env.DRIFT_THRESHOLD}={raw!r}"
        try:
            value = float(raw)
        except ValueError:
            raise DriftInputError(f"{where} is not a number (e.g. {DEFAULT_THRESHOLD})") from None
    else:
        return DEFAULT_THRESHOLD
    if not (math.isfinite(value) and 0 < value <= DRIFT_THRESHOLD_MAX):
        raise DriftInputError(
            f"{where} must be a positive number of at most {DRIFT_THRESHOLD_MAX:g}, got {value}"
        )
    return value


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from inference_server.runtime.calibration import CalibrationParams

    if args.model is None:
        raise DriftInputError(f"scoring a dataset needs --model or {Env.MODEL_PATH}")
    model = load_model_of(args)
    calibration = CalibrationParams.load(args.calibration) if args.calibration else None
    return model, calibration


def _windows(args: argparse.Namespace) -> tuple[PredictionWindow, PredictionWindow]:
    if args.reference_offset and not args.prometheus_url:
        raise DriftInputError("--reference-offset needs --prometheus-url")
    model_cache: list[tuple[Any, Any]] = []

    def from_dataset(spec: str, seed: int) -> PredictionWindow:
        if not model_cache:
            model_cache.append(_load_model(args))
        model, calibration = model_cache[0]
        texts = _sample(load_texts(spec, args.data_dir), args.sample, seed)
        return score_texts(model, texts, calibration=calibration, source=spec)

    if args.prometheus_url:
        if not (args.model_version or args.model):
            raise DriftInputError(
                f"reading Prometheus needs the serving version: --model-version or ${Env.MODEL_VERSION}"
            )
        if args.reference_offset:
            check_windows_apart(args.window, args.reference_offset)
        current = window_from_prometheus(args.prometheus_url, model_version_of(args), args.window)
    elif args.current_predictions:
        current = read_predictions_jsonl(args.current_predictions)
    else:
        current = from_dataset(args.current_dataset, args.current_seed)

    if args.reference_offset:
        reference = window_from_prometheus(
            args.prometheus_url, model_version_of(args), args.window, args.reference_offset
        )
    elif args.reference_predictions:
        reference = read_predictions_jsonl(args.reference_predictions)
    else:
        reference = from_dataset(args.reference_dataset, args.reference_seed)
    if problem := label_mismatch(reference, current):
        raise DriftInputError(problem)
    return reference, current


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except OSError as exc:  # writing the result (disk full, permissions): the environment, not drift
        return cli_error("drift", str(exc), EXIT_BAD_INPUT)
    except Exception:
        # An uncaught exception exits 1, which a CronJob reads as "drift": keep the traceback for the
        # bug report, but exit with the "nothing decided" code.
        import traceback

        traceback.print_exc()
        return cli_error("drift", "internal error (traceback above); no drift verdict was reached")


def _run(args: argparse.Namespace) -> int:
    from inference_server.runtime.model import ArtifactError, ModelLoadError

    try:
        threshold = resolve_threshold(args.threshold, os.environ)
        check_output_file(args.output, "--output")
        reference, current = _windows(args)
    except (
        DriftInputError,
        PrometheusError,
        MLInputError,
        ModelLoadError,
        ArtifactError,
        OSError,
        ValueError,
    ) as exc:
        return cli_error("drift", str(exc), EXIT_BAD_INPUT)
    report = compare_windows(reference, current, threshold=threshold, min_samples=args.min_samples)
    result = to_job_result(
        report, reference, current, model_version=model_version_of(args), now=datetime.now(UTC)
    )
    text = json.dumps(json.loads(result.to_json()), indent=2, sort_keys=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    else:
        print(text)
    print(f"drift: {report.verdict}: {report.message}", file=sys.stderr)
    if args.exit_zero:
        return EXIT_OK
    return {"Drift": EXIT_DRIFT, "NoData": EXIT_NO_DATA}.get(report.verdict, EXIT_OK)
