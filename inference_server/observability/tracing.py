"""OpenTelemetry tracing: spans named contract.Span.*, exported over OTLP/HTTP when configured.

Without OTEL_EXPORTER_OTLP_ENDPOINT (and no provider injected by a test) the server uses a no-op
tracer, so the hot path pays nothing for spans nobody collects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace

SERVICE_NAME = "sentiment-server"


def build_tracer_provider(otlp_endpoint: str | None, *, model_version: str) -> Any:
    """An SDK provider exporting in batches to ``{endpoint}/v1/traces``, or None when not configured."""
    if not otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": SERVICE_NAME, "service.version": model_version})
    provider = TracerProvider(resource=resource)
    endpoint = otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class QuietTracer(trace.NoOpTracer):
    """A no-op tracer whose ``start_as_current_span`` really costs nothing.

    The API's NoOpTracer still builds a generator context manager and attaches a non-recording span to
    the context for every span (~30 µs each measured on a busy 2-core machine, 1 µs here), five per
    request on the hot path, for spans that nobody records. Here every span is the invalid
    non-recording span and nothing is attached; the server never reads the current span, so nothing
    else changes.
    """

    _NULL = contextlib.nullcontext(trace.INVALID_SPAN)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        return self._NULL  # type: ignore[return-value]


def tracer_from(provider: Any) -> trace.Tracer:
    if provider is None:
        return QuietTracer()
    tracer: trace.Tracer = provider.get_tracer("inference_server")
    return tracer


def shutdown_provider(provider: Any) -> None:
    """Flush and stop the exporter (a no-op for None or for providers without shutdown)."""
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()
