"""Start-up and shutdown: load (verify sha256, quantize, calibrate) → warm up → ready; drain → stop.

The phase is what /readyz reports. Loading runs in a background task so that /healthz answers while
a large model loads; a model that must not be served (sha256 mismatch, unloadable directory, invalid
calibration file) puts the server in FAILED and calls ``on_fatal``, which makes ``sentiment-server``
exit non-zero rather than linger unready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from inference_server.contract import Env, Span
from inference_server.feedback.recent import RecentPredictions
from inference_server.feedback.store import FeedbackStoreError
from inference_server.observability.metrics import ServerMetrics
from inference_server.runtime.artifact import ArtifactError
from inference_server.runtime.calibration import CalibrationError, CalibrationParams
from inference_server.runtime.model import LoadedModel, ModelLoadError, load_model
from inference_server.runtime.quantization import int8_variant
from inference_server.runtime.threads import configure_torch_threads
from inference_server.serving.engine import InferenceEngine
from inference_server.settings import ServerSettings

log = logging.getLogger(__name__)


class Phase(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass
class ServerState:
    phase: Phase = Phase.STARTING
    error_code: str | None = None
    error: str | None = None
    engine: InferenceEngine | None = None
    explain_model: LoadedModel | None = None  # fp32 weights for saliency (also when serving INT8)
    torch_threads: int = 0
    in_flight: int = 0  # HTTP requests being handled (RequestMetrics keeps it)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY


@dataclass(frozen=True)
class Loaded:
    served: LoadedModel
    fp32: LoadedModel
    calibration: CalibrationParams | None
    threads: int


def load_everything(settings: ServerSettings) -> Loaded:
    """Blocking: threads, model (sha256 verified), optional INT8 copy, calibration parameters."""
    threads = configure_torch_threads(settings.torch_threads)
    fp32 = load_model(
        settings.model_path,
        version=settings.model_version,
        quantized=False,
        expected_sha256=settings.model_sha256,
        max_tokens=settings.max_tokens,
    )
    served = fp32
    if settings.enable_quantized_model:
        served = int8_variant(
            fp32, backend=settings.int8_backend, threads=threads, cache_dir=settings.onnx_cache_dir
        )
    calibration = _calibration(settings.calibration_params_path)
    return Loaded(served, fp32, calibration, threads)


def _calibration(path: Path | None) -> CalibrationParams | None:
    if path is None:
        return None
    try:
        return CalibrationParams.load(path)
    except CalibrationError as exc:
        raise CalibrationError(f"{Env.CALIBRATION_PARAMS_PATH}={path}: {exc}") from exc


_FAILURE_CODES: dict[type[BaseException], str] = {
    ArtifactError: "artifact_mismatch",
    ModelLoadError: "model_load_failed",
    CalibrationError: "calibration_invalid",
    FeedbackStoreError: "feedback_store_unavailable",
}


def fail(state: ServerState, exc: BaseException, on_fatal: Callable[[str], None] | None) -> None:
    code = _FAILURE_CODES.get(type(exc), "model_load_failed")
    message = str(exc) or type(exc).__name__
    state.phase, state.error_code, state.error = Phase.FAILED, code, message
    expected = isinstance(exc, tuple(_FAILURE_CODES))
    log.error(
        "refusing to serve: %s",
        message,
        exc_info=None if expected else exc,
        extra={"fields": {"event": "model_load_failed", "code": code}},
    )
    if on_fatal is not None:
        on_fatal(message)


async def bring_up(
    settings: ServerSettings,
    state: ServerState,
    *,
    metrics: ServerMetrics,
    tracer: Any,
    recent: RecentPredictions,
    on_fatal: Callable[[str], None] | None = None,
) -> None:
    """Load → warm up → READY; any failure on the way is FAILED (never a server stuck in LOADING)."""
    state.phase = Phase.LOADING
    try:
        with tracer.start_as_current_span(Span.MODEL_LOAD) as span:
            span.set_attribute("model.version", settings.model_version)
            span.set_attribute("model.quantized", settings.enable_quantized_model)
            if settings.enable_quantized_model:
                span.set_attribute("model.int8_backend", settings.int8_backend)
            loaded = await asyncio.to_thread(load_everything, settings)
        state.torch_threads = loaded.threads
        state.explain_model = loaded.fp32 if settings.enable_explainability else None
        engine = InferenceEngine(
            loaded.served,
            calibration=loaded.calibration,
            metrics=metrics,
            tracer=tracer,
            recent=recent,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=max(settings.max_batch_tokens, loaded.served.max_tokens),
            batch_wait_ms=settings.batch_wait_ms,
            threads=loaded.threads,
            workers=settings.forward_workers,
        )
        if engine.batcher.workers > loaded.threads:
            log.warning(
                "FORWARD_WORKERS=%d exceeds the %d intra-op thread(s) this server uses (TORCH_THREADS or "
                "the CPU quota): slices will share cores; 0 = one per thread",
                engine.batcher.workers,
                loaded.threads,
            )
        engine.batcher.start()
        state.engine = engine
        state.phase = Phase.WARMING
        await engine.warm_up()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # whatever went wrong, this model must not be served
        fail(state, exc, on_fatal)
        return
    metrics.set_model_info(quantized=loaded.served.quantized, calibrated=engine.calibrated)
    metrics.set_ready(True)
    state.phase = Phase.READY
    log.info(
        "ready",
        extra={
            "fields": {
                "event": "ready",
                "model_version": settings.model_version,
                "labels": list(loaded.served.labels),
                "quantized": loaded.served.quantized,
                "calibrated": engine.calibrated,
                "max_tokens": loaded.served.max_tokens,
                "torch_threads": loaded.threads,
                "forward_workers": engine.batcher.workers,
            }
        },
    )


async def drain(state: ServerState, metrics: ServerMetrics, *, timeout_s: float) -> None:
    """Stop taking inference work (readyz → 503), finish what is queued, stop the worker thread."""
    if state.phase is not Phase.FAILED:
        state.phase = Phase.DRAINING
    metrics.set_ready(False)
    if state.engine is not None:
        await state.engine.batcher.stop(timeout_s)
