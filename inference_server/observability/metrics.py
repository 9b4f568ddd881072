"""Prometheus metrics of one server instance, named and labelled as inference_server.contract says.

Each app instance owns its own CollectorRegistry, so several apps (tests) never collide, and every
series carries ``model_version`` so that the operator compares canary and stable over one window.
"""

from __future__ import annotations

from collections.abc import Sequence

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
            "Request latency in seconds, from the request seen to its last response byte sent",
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
        self.forward_latency = Histogram(
            c.METRIC_FORWARD_LATENCY,
            "Seconds per forward pass (one micro-batch) on the forward thread",
            labels[c.METRIC_FORWARD_LATENCY],
            buckets=c.LATENCY_BUCKETS,
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
            c.METRIC_FEEDBACK,
            "Feedback outcomes by true and predicted label",
            labels[c.METRIC_FEEDBACK],
            registry=reg,
        )
        self.model_info = Gauge(
            c.METRIC_MODEL_INFO, "The served model (value 1)", labels[c.METRIC_MODEL_INFO], registry=reg
        )
        self.ready = Gauge(
            c.METRIC_READY, "1 when the model is loaded and warmed", labels[c.METRIC_READY], registry=reg
        )
        v = model_version
        self._batch_size = self.batch_size.labels(v)
        self._forward_latency = self.forward_latency.labels(v)
        self._confidence = self.confidence.labels(v)
        self._ready = self.ready.labels(v)
        self._ready.set(0)
        # Labelled children, bound on first use: ``labels()`` (lock, label validation) costs a few µs a
        # call, four times per request on the hot path. Keys are bounded (endpoints × status codes, labels).
        self._requests: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._predictions: dict[str, Counter] = {}
        self._tokens: dict[str, Histogram] = {}

    def declare_series(self, labels: Sequence[str], endpoints: Sequence[str]) -> None:
        """Export the model's prediction, feedback and input-token series at 0 before anything is counted.

        Prometheus takes a series' first scraped sample as its starting point, so counts made before a
        series first appears are never seen by increase() or rate(): every new pod would hide its first
        predictions from the drift job and its first feedback of each kind from online quality (one lost
        "incorrect" at low feedback volume flatters the F1). Only the feedback combinations that can
        occur: the outcome follows from the true and the predicted label."""
        v = self.model_version
        for label in labels:
            self._predictions.setdefault(label, self.predictions.labels(v, label))
            for predicted in labels:
                outcome = c.FeedbackOutcome.CORRECT if label == predicted else c.FeedbackOutcome.INCORRECT
                self.feedback.labels(v, label, predicted, str(outcome))
        for endpoint in endpoints:
            self._tokens.setdefault(endpoint, self.input_tokens.labels(v, endpoint))

    def observe_request(self, endpoint: str, status_code: int, seconds: float) -> None:
        children = self._requests.get((endpoint, status_code))
        if children is None:
            children = (
                self.requests.labels(self.model_version, endpoint, str(status_code)),
                self.latency.labels(self.model_version, endpoint, c.status_class(status_code)),
            )
            self._requests[(endpoint, status_code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, size: int, forward_s: float | None = None) -> None:
        self._batch_size.observe(size)
        if forward_s is not None:
            self._forward_latency.observe(forward_s)

    def observe_prediction(self, label: str, confidence: float) -> None:
        child = self._predictions.get(label)
        if child is None:
            child = self._predictions[label] = self.predictions.labels(self.model_version, label)
        child.inc()
        self._confidence.observe(confidence)

    def observe_tokens(self, endpoint: str, n_tokens: int) -> None:
        child = self._tokens.get(endpoint)
        if child is None:
            child = self._tokens[endpoint] = self.input_tokens.labels(self.model_version, endpoint)
        child.observe(n_tokens)

    def observe_feedback(self, label: str, predicted: str, outcome: c.FeedbackOutcome) -> None:
        self.feedback.labels(self.model_version, label, predicted, str(outcome)).inc()

    def set_model_info(self, *, quantized: bool, calibrated: bool) -> None:
        self.model_info.labels(self.model_version, str(quantized).lower(), str(calibrated).lower()).set(1)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
