"""Start-up and shutdown: load (verify sha256, quantize, calibrate) → warm up → ready; drain → stop.

The phase is what /readyz reports. Loading runs in a background task so that /healthz answers while
a large model loads; a model that must not be served (sha256 mismatch, unloadable directory, invalid
calibration file) puts the server in FAILED and calls ``on_fatal``, which makes ``sentiment-server``
exit non-zero rather than linger unready. The load runs on a daemon thread of its own: a SIGTERM during
loading abandons it, and the process exits without waiting for it.

Shutdown has one deadline, SHUTDOWN_GRACE_SECONDS from the moment it begins (SIGTERM: see
serving/drain.py), which every step shares (``Deadline``): requests in flight may run until its last
part, the tail (a quarter of the grace, at most a second); at the tail's start the requests still
waiting on the micro-batcher are answered 503 ``draining``; halfway through it uvicorn cancels whatever
is still running (503 ``draining`` too for a guarded POST that has not started its response); the
lifespan's batcher drain and span flush get what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

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
T = TypeVar("T")
# The end of the grace kept back from requests in flight (see the module docstring).
SHUTDOWN_TAIL_FRACTION = 0.25
SHUTDOWN_TAIL_MAX_S = 1.0


class Phase(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(frozen=True)
class Deadline:
    """The one shutdown deadline, ``at`` on the monotonic clock (asyncio's loop clock too), ``grace_s``
    after shutdown began."""

    at: float
    grace_s: float

    @classmethod
    def after(cls, grace_s: float) -> Deadline:
        grace_s = max(0.0, grace_s)
        return cls(time.monotonic() + grace_s, grace_s)

    @property
    def tail_s(self) -> float:
        return min(SHUTDOWN_TAIL_MAX_S, SHUTDOWN_TAIL_FRACTION * self.grace_s)

    def remaining(self, *, before_s: float = 0.0) -> float:
        """Seconds from now until ``before_s`` ahead of the deadline (never negative)."""
        return max(0.0, self.at - before_s - time.monotonic())

    def until_abandon(self) -> float:
        """Until requests still waiting on the micro-batcher are answered 503 ``draining``."""
        return self.remaining(before_s=self.tail_s)

    def until_cancel(self) -> float:
        """Until uvicorn cancels the requests still running (a guarded POST whose response has not
        started is then answered 503 draining: serving/limits.RequestGuard)."""
        return self.remaining(before_s=self.tail_s / 2)


@dataclass
class ServerState:
    phase: Phase = Phase.STARTING
    error_code: str | None = None
    error: str | None = None
    engine: InferenceEngine | None = None
    explain_model: LoadedModel | None = None  # fp32 weights for saliency (also when serving INT8)
    torch_threads: int = 0
    in_flight: int = 0  # HTTP requests being handled (RequestMetrics keeps it)
    explaining: int = 0  # /explain requests running or waiting for the forward workers (api/explain.py)
    shutdown_deadline: Deadline | None = None  # set once, when shutdown begins

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def begin_drain(self, grace_s: float) -> Deadline:
        """Unready at once (DRAINING, unless FAILED); the first call starts the shutdown deadline, later
        ones (a second signal, the lifespan's end) keep it."""
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        if self.shutdown_deadline is None:
            self.shutdown_deadline = Deadline.after(grace_s)
        return self.shutdown_deadline


def in_daemon_thread(fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """``fn(*args)`` (blocking) on a daemon thread of its own, its outcome delivered to the running loop.

    Unlike ``asyncio.to_thread`` (an executor thread, joined when the loop closes and again when the
    interpreter exits), a caller that stops waiting, cancelled by a shutdown or timed out, leaves
    nothing the process must wait for before it exits."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(result: Any, error: BaseException | None) -> None:
        if future.done():  # nobody waits any more
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(fn, *args)
        except BaseException as exc:  # delivered to the waiter, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: the process is on its way out
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


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
            # A daemon thread: a shutdown during loading abandons it (the cancelled await returns at once)
            # and the process exits without waiting for the load to finish.
            loaded = await in_daemon_thread(load_everything, settings, name="model-load")
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
            endpoints=settings.inference_paths(),
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
    """After ``state.begin_drain`` (readyz → 503): finish what is queued within ``timeout_s`` (then
    answer what still waits 503 ``draining``), stop the worker threads."""
    metrics.set_ready(False)
    if state.engine is not None:
        await state.engine.batcher.stop(timeout_s)
