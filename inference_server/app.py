"""The FastAPI application factory: one app per settings object, with its own registry and tracer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from inference_server.api import explain, feedback, health, inference, metrics
from inference_server.api.deps import AppContext
from inference_server.api.errors import UnhandledErrors, install_error_handlers
from inference_server.api.middleware import RequestMetrics
from inference_server.contract import Env, Path
from inference_server.feedback.recent import RecentPredictions
from inference_server.feedback.store import FeedbackStore, FeedbackStoreError
from inference_server.observability.metrics import ServerMetrics
from inference_server.observability.tracing import build_tracer_provider, shutdown_provider, tracer_from
from inference_server.serving.batching import Ticket
from inference_server.serving.lifecycle import ServerState, bring_up, drain, fail, in_daemon_thread
from inference_server.serving.limits import PathPolicy, RequestGuard
from inference_server.serving.ratelimit import RateLimiter
from inference_server.settings import ServerSettings

log = logging.getLogger(__name__)
PURGE_INTERVAL_S = 3600.0


async def _flush_spans(provider: Any, timeout_s: float) -> None:
    """Flush and stop the span exporter within ``timeout_s`` (what is left of the shutdown deadline), on a
    daemon thread: a collector that does not answer costs at most that, and the process does not wait
    for the abandoned flush when it exits."""
    try:
        await asyncio.wait_for(in_daemon_thread(shutdown_provider, provider, name="span-flush"), timeout_s)
    except TimeoutError:
        log.warning("spans not flushed within the %.2fs left of the shutdown grace; dropped", timeout_s)
    except Exception:  # a failing exporter must not turn a clean drain into a failed exit
        log.exception("span flush failed")


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _purge_periodically(ctx: AppContext, interval_s: float) -> None:
    while True:
        if ctx.store is not None:
            try:
                # On the store's own thread, not the default pool that /infer's tokenising uses.
                removed = await ctx.store.on_own_thread(partial(ctx.store.purge, ctx.clock()))
                if removed:
                    log.info("purged %d feedback samples past retention", removed)
            except Exception:  # a failed purge must not stop serving; it is retried next interval
                log.exception("feedback purge failed")
        await asyncio.sleep(interval_s)


def _policies(settings: ServerSettings, state: ServerState) -> dict[str, PathPolicy]:
    def ticket() -> Ticket | None:
        return state.engine.batcher.ticket() if state.engine is not None else None

    size = settings.max_body_bytes
    infer_limiter = RateLimiter(settings.rate_limit_infer_per_second)
    policies = {
        Path.INFER: PathPolicy(infer_limiter, size, on_start=ticket),
        # Feedback shares neither budget with inference: a flood of it must not starve predictions.
        Path.FEEDBACK: PathPolicy(RateLimiter(settings.rate_limit_infer_per_second), size),
    }
    served = settings.inference_paths()
    if Path.INFER_BATCH in served:
        policies[Path.INFER_BATCH] = PathPolicy(
            RateLimiter(settings.rate_limit_batch_per_second), size, on_start=ticket
        )
    if Path.EXPLAIN in served:
        policies[Path.EXPLAIN] = PathPolicy(RateLimiter(settings.rate_limit_explain_per_second), size)
    return {str(k): v for k, v in policies.items()}


def create_app(
    settings: ServerSettings,
    *,
    tracer_provider: Any = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], datetime] = _utcnow,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. Tests inject a tracer provider (in-memory exporter), a registry and a clock;
    ``sentiment-server`` injects ``on_fatal`` to exit when the model must not be served."""
    owns_provider = tracer_provider is None
    provider = (
        tracer_provider
        if tracer_provider is not None
        else build_tracer_provider(settings.otlp_endpoint, model_version=settings.model_version)
    )
    server_metrics = ServerMetrics(settings.model_version, registry)
    state = ServerState()
    ctx = AppContext(
        settings=settings,
        state=state,
        metrics=server_metrics,
        tracer=tracer_from(provider),
        recent=RecentPredictions(
            max_entries=settings.recent_requests_max, ttl_s=settings.recent_requests_ttl_seconds
        ),
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            ctx.store = await asyncio.to_thread(
                FeedbackStore,
                settings.feedback_db_path,
                retention=timedelta(days=settings.feedback_retention_days),
            )
        except FeedbackStoreError as exc:  # FAILED like a bad model: the variable named, no traceback
            fail(state, FeedbackStoreError(f"{Env.FEEDBACK_DB_PATH}: {exc}"), on_fatal)
        ctx.background = [
            asyncio.create_task(_purge_periodically(ctx, PURGE_INTERVAL_S), name="feedback-purge")
        ]
        if ctx.store is not None:
            bringing_up = bring_up(
                settings,
                state,
                metrics=server_metrics,
                tracer=ctx.tracer,
                recent=ctx.recent,
                on_fatal=on_fatal,
            )
            ctx.background.append(asyncio.create_task(bringing_up, name="bring-up"))
        try:
            yield
        finally:
            # One deadline for the whole shutdown: started by SIGTERM (serving/drain.py), so uvicorn's
            # wait for the requests in flight has already spent part of it; otherwise it starts now.
            deadline = state.begin_drain(settings.shutdown_grace_seconds)
            for task in ctx.background:
                task.cancel()  # a no-op for a bring-up that has finished
            await asyncio.gather(*ctx.background, return_exceptions=True)
            await drain(state, server_metrics, timeout_s=deadline.until_abandon())
            if ctx.store is not None:
                ctx.store.close()
            if owns_provider and provider is not None:
                await _flush_spans(provider, deadline.remaining())

    app = FastAPI(
        title="sentiment-rollouts inference server",
        version=settings.model_version,
        description="Sentiment classification with micro-batching, calibration, saliency and feedback. "
        'Every error is JSON `{"error": {"code", "message", "field"?}}`.',
        lifespan=lifespan,
        docs_url=str(Path.DOCS),
        redoc_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(inference.router)
    served = settings.inference_paths()
    if Path.INFER_BATCH in served:
        app.include_router(inference.batch_router)
    if Path.EXPLAIN in served:
        app.include_router(explain.router)
    app.include_router(feedback.router)
    app.include_router(metrics.router)

    def in_flight(delta: int) -> None:
        state.in_flight += delta

    # Added last = outermost: metrics see every response, including the guard's 413/415/429.
    app.add_middleware(
        RequestGuard,
        policies=_policies(settings, state),
        # Shutdown has begun (SIGTERM or the lifespan's end): a request cancelled now gets 503 draining.
        draining=lambda: state.shutdown_deadline is not None,
    )
    app.add_middleware(
        RequestMetrics,
        observe=server_metrics.observe_request,
        in_flight=in_flight,
        tracer=ctx.tracer if provider is not None else None,
    )
    app.add_middleware(UnhandledErrors)  # added last: the outermost, so it sees every error
    return app
