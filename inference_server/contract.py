"""Names shared by the data plane (inference server, ML jobs) and the control plane (operator).

This module is the single source of truth for the data-plane contract in DESIGN.md: HTTP paths,
environment variables, Prometheus metric names and labels, span names, and the schema of the
results that Jobs report. It imports only the standard library, so the operator image (which has
no torch) can import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Final

# --- HTTP ---------------------------------------------------------------------------------------
HTTP_PORT: Final = 8080


class Path(StrEnum):
    HEALTHZ = "/healthz"
    READYZ = "/readyz"
    INFER = "/infer"
    INFER_BATCH = "/infer/batch"
    EXPLAIN = "/explain"
    FEEDBACK = "/feedback"
    METRICS = "/metrics"
    DOCS = "/docs"


# --- Environment --------------------------------------------------------------------------------
class Env(StrEnum):
    MODEL_PATH = "MODEL_PATH"
    MODEL_VERSION = "MODEL_VERSION"
    MODEL_SHA256 = "MODEL_SHA256"
    MAX_TOKENS = "MAX_TOKENS"
    ENABLE_BATCH = "ENABLE_BATCH"
    DRIFT_THRESHOLD = "DRIFT_THRESHOLD"
    CALIBRATION_PARAMS_PATH = "CALIBRATION_PARAMS_PATH"
    ENABLE_AB_ROUTING = "enable_ab_routing"
    ENABLE_QUANTIZED_MODEL = "enable_quantized_model"
    ENABLE_EXPLAINABILITY = "enable_explainability"
    OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
    # Reprocess as an Indexed Job: Kubernetes sets the index; the pod template (the operator's, when it
    # creates the Job) must set the count: an index without it is refused.
    JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
    JOB_COMPLETIONS = "JOB_COMPLETIONS"
    # Server tuning (SentimentModel spec.inference → env; defaults in inference_server/settings.py).
    HOST = "HOST"
    PORT = "PORT"
    MAX_BATCH_SIZE = "MAX_BATCH_SIZE"  # micro-batch: most requests in one forward pass
    BATCH_WAIT_MS = "BATCH_WAIT_MS"  # micro-batch: longest wait for companions
    MAX_BATCH_TOKENS = "MAX_BATCH_TOKENS"  # micro-batch: padded-token budget of one forward pass
    MAX_BATCH_ITEMS = "MAX_BATCH_ITEMS"  # POST /infer/batch: most items in one request
    MAX_BODY_BYTES = "MAX_BODY_BYTES"
    RATE_LIMIT_INFER_PER_SECOND = "RATE_LIMIT_INFER_PER_SECOND"  # 0 disables
    RATE_LIMIT_BATCH_PER_SECOND = "RATE_LIMIT_BATCH_PER_SECOND"  # 0 disables
    RATE_LIMIT_EXPLAIN_PER_SECOND = "RATE_LIMIT_EXPLAIN_PER_SECOND"  # 0 disables
    FEEDBACK_DB_PATH = "FEEDBACK_DB_PATH"
    TORCH_THREADS = "TORCH_THREADS"  # 0: from the CPU quota
    FORWARD_WORKERS = "FORWARD_WORKERS"  # slices of a batch run side by side; 0: one per thread
    SHUTDOWN_GRACE_SECONDS = "SHUTDOWN_GRACE_SECONDS"
    LOG_LEVEL = "LOG_LEVEL"
    INT8_BACKEND = "INT8_BACKEND"  # enable_quantized_model: "onnxruntime" (default) | "torch"
    ONNX_CACHE_DIR = "ONNX_CACHE_DIR"  # where the built INT8 ONNX model is cached (an emptyDir in a pod)


# The drift score (the largest of label PSI, confidence PSI and the KS statistic) above which a drift
# run is a breach: DRIFT_THRESHOLD's default for the drift job, the server's settings and the CRD's
# spec.drift.threshold alike. Why 0.15: inference_server/ml/drift.py and docs/reports/drift.md.
DRIFT_THRESHOLD_DEFAULT: Final = 0.15
# Its upper bound, for the job, the server's settings and the CRD alike: PSI beyond it means two
# unrelated windows anyway.
DRIFT_THRESHOLD_MAX: Final = 100.0


# --- Prometheus metrics -------------------------------------------------------------------------
# Every data-plane series carries LABEL_MODEL_VERSION so that the operator can compare the canary
# with the stable version over the same window.
LABEL_MODEL_VERSION: Final = "model_version"
LABEL_ENDPOINT: Final = "endpoint"
LABEL_STATUS_CODE: Final = "status_code"
# The latency histogram is split by class (2xx, 4xx, 5xx), not by code: a canary that answers quickly
# with 429s or 413s must not look faster than the stable version, and per-code buckets would multiply
# the series (19 buckets each). The rollout's p95 reads status_class="2xx" only, e.g.
#   histogram_quantile(0.95, sum by (le) (rate(sentiment_request_latency_seconds_bucket{
#     model_version="v2", endpoint="/infer", status_class="2xx"}[15m])))
LABEL_STATUS_CLASS: Final = "status_class"


def status_class(status_code: int) -> str:
    """The LABEL_STATUS_CLASS value of an HTTP status code: 200 → "2xx", 499 → "4xx"."""
    return f"{status_code // 100}xx"


LABEL_LABEL: Final = "label"
LABEL_OUTCOME: Final = "outcome"  # FeedbackOutcome
# The label the model predicted, beside the true `label`: with more than two classes an "incorrect"
# alone does not say which class gained a false positive, so per-class precision and online macro-F1
# need both (outcome is kept: error rates need no comparison of labels in PromQL).
LABEL_PREDICTED: Final = "predicted"

# Counters are declared without the `_total` suffix (prometheus_client appends it); the
# *_SERIES names are what appears in the exposition format and in PromQL.
METRIC_REQUESTS: Final = "sentiment_requests"
METRIC_REQUESTS_SERIES: Final = "sentiment_requests_total"
METRIC_REQUEST_LATENCY: Final = "sentiment_request_latency_seconds"
METRIC_BATCH_SIZE: Final = "sentiment_batch_size"
# Seconds per forward pass (one per micro-batch) on the forward thread: with the request latency it
# tells what the server adds to the model (the benchmark's overhead at concurrency 1).
METRIC_FORWARD_LATENCY: Final = "sentiment_forward_latency_seconds"
METRIC_PREDICTIONS: Final = "sentiment_predictions"
METRIC_PREDICTIONS_SERIES: Final = "sentiment_predictions_total"
METRIC_CONFIDENCE: Final = "sentiment_prediction_confidence"
METRIC_INPUT_TOKENS: Final = "sentiment_input_tokens"
METRIC_FEEDBACK: Final = "sentiment_feedback"
METRIC_FEEDBACK_SERIES: Final = "sentiment_feedback_total"
METRIC_MODEL_INFO: Final = "sentiment_model_info"
METRIC_READY: Final = "sentiment_model_ready"

# Labels of each metric, in declaration order (model_version always first).
METRIC_LABELS: Final[dict[str, tuple[str, ...]]] = {
    METRIC_REQUESTS: (LABEL_MODEL_VERSION, LABEL_ENDPOINT, LABEL_STATUS_CODE),
    METRIC_REQUEST_LATENCY: (LABEL_MODEL_VERSION, LABEL_ENDPOINT, LABEL_STATUS_CLASS),
    METRIC_BATCH_SIZE: (LABEL_MODEL_VERSION,),
    METRIC_FORWARD_LATENCY: (LABEL_MODEL_VERSION,),
    METRIC_PREDICTIONS: (LABEL_MODEL_VERSION, LABEL_LABEL),
    METRIC_CONFIDENCE: (LABEL_MODEL_VERSION,),
    METRIC_INPUT_TOKENS: (LABEL_MODEL_VERSION, LABEL_ENDPOINT),
    METRIC_FEEDBACK: (LABEL_MODEL_VERSION, LABEL_LABEL, LABEL_PREDICTED, LABEL_OUTCOME),
    METRIC_MODEL_INFO: (LABEL_MODEL_VERSION, "quantized", "calibrated"),
    METRIC_READY: (LABEL_MODEL_VERSION,),
}

# Latency buckets fit for 1 ms .. 10 s (seconds).
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Confidence buckets: fine near 1.0, where a calibrated model puts most of its mass. Drift
# statistics (PSI over binned confidence) read these buckets back from Prometheus.
CONFIDENCE_BUCKETS: Final = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 1.0)
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS: Final = (8, 16, 32, 64, 128, 256, 512)


class FeedbackOutcome(StrEnum):
    CORRECT = "correct"
    INCORRECT = "incorrect"


# --- OpenTelemetry spans ------------------------------------------------------------------------
class Span(StrEnum):
    PREPROCESS = "preprocess"
    MODEL_LOAD = "model_load"
    INFERENCE_FORWARD = "inference_forward"
    CALIBRATION = "calibration"
    RESPONSE_SERIALIZE = "response_serialize"


# --- Job results --------------------------------------------------------------------------------
# A Job (evaluation, warm-up, drift, reprocess) writes one JobResult as JSON under this key of a
# ConfigMap owned by the resource it reports on; the operator reads it from there.
JOB_RESULT_CONFIGMAP_KEY: Final = "result.json"
JOB_RESULT_SCHEMA_VERSION: Final = 1


class JobKind(StrEnum):
    EVALUATION = "evaluation"
    WARMUP = "warmup"
    DRIFT = "drift"
    REPROCESS = "reprocess"


class JobOutcome(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobResult:
    kind: JobKind
    outcome: JobOutcome
    model_version: str
    finished_at: str  # RFC 3339, UTC
    metrics: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    schema_version: int = JOB_RESULT_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> JobResult:
        data = json.loads(raw)
        if data.get("schema_version") != JOB_RESULT_SCHEMA_VERSION:
            raise ValueError(f"unsupported job result schema_version {data.get('schema_version')!r}")
        return cls(
            kind=JobKind(data["kind"]),
            outcome=JobOutcome(data["outcome"]),
            model_version=str(data["model_version"]),
            finished_at=str(data["finished_at"]),
            metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
            detail=dict(data.get("detail", {})),
            message=str(data.get("message", "")),
        )
