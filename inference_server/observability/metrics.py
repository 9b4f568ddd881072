"""Prometheus metrics of one server instance, named and labelled as inference_server.contract says.

Each app instance owns its own CollectorRegistry, so several apps (tests) never collide, and every
series carries ``model_version`` so that the operator compares canary and stable over one window.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from inference_server import contract as c

EXPOSITION_CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self, model_version: str, registry: CollectorRegistry | None = None) -> None:
        self.model_version = model_version
        self.registry = registry if registry is not None else CollectorRegistry()
        reg, labels = self.registry, c.METRIC_LABELS
        ProcessCollector(registry=reg)
        self.requests = Counter(
            c.METRIC_REQUESTS,
            "HTTP requests by endpoint and status code",
            labels[c.METRIC_REQUESTS],
            registry=reg,
        )
        self.latency = Histogram(
            c.METRIC_REQUEST_LATENCY,
            "Request latency in seconds, from first byte in to response sent",
            labels[c.METRIC_REQUEST_LATENCY],
            buckets=c.LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            c.METRIC_BATCH_SIZE,
            "Texts per forward pass (micro-batch size)",
            labels[c.METRIC_BATCH_SIZE],
            buckets=c.BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self.predictions = Counter(
            c.METRIC_PREDICTIONS, "Predictions by label", labels[c.METRIC_PREDICTIONS], registry=reg
        )
        self.confidence = Histogram(
            c.METRIC_CONFIDENCE,
            "Confidence (probability of the predicted label)",
            labels[c.METRIC_CONFIDENCE],
            buckets=c.CONFIDENCE_BUCKETS,
            registry=reg,
        )
        self.input_tokens = Histogram(
            c.METRIC_INPUT_TOKENS,
            "Tokens per input text (special tokens included)",
            labels[c.METRIC_INPUT_TOKENS],
            buckets=c.TOKEN_BUCKETS,
            registry=reg,
        )
        self.feedback = Counter(
            c.METRIC_FEEDBACK, "Feedback outcomes by true label", labels[c.METRIC_FEEDBACK], registry=reg
        )
        self.model_info = Gauge(
            c.METRIC_MODEL_INFO, "The served model (value 1)", labels[c.METRIC_MODEL_INFO], registry=reg
        )
        self.ready = Gauge(
            c.METRIC_READY, "1 when the model is loaded and warmed", labels[c.METRIC_READY], registry=reg
        )
        v = model_version
        self._batch_size = self.batch_size.labels(v)
        self._confidence = self.confidence.labels(v)
        self._ready = self.ready.labels(v)
        self._ready.set(0)

    def observe_request(self, endpoint: str, status_code: int, seconds: float) -> None:
        self.requests.labels(self.model_version, endpoint, str(status_code)).inc()
        self.latency.labels(self.model_version, endpoint).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self._batch_size.observe(size)

    def observe_prediction(self, label: str, confidence: float) -> None:
        self.predictions.labels(self.model_version, label).inc()
        self._confidence.observe(confidence)

    def observe_tokens(self, endpoint: str, n_tokens: int) -> None:
        self.input_tokens.labels(self.model_version, endpoint).observe(n_tokens)

    def observe_feedback(self, label: str, outcome: c.FeedbackOutcome) -> None:
        self.feedback.labels(self.model_version, label, str(outcome)).inc()

    def set_model_info(self, *, quantized: bool, calibrated: bool) -> None:
        self.model_info.labels(self.model_version, str(quantized).lower(), str(calibrated).lower()).set(1)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
