"""What handlers depend on: the app's context, and a ready engine (else 503)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from inference_server.api.errors import ApiError
from inference_server.feedback.recent import RecentPredictions
from inference_server.feedback.store import FeedbackStore
from inference_server.observability.metrics import ServerMetrics
from inference_server.serving.engine import InferenceEngine
from inference_server.serving.lifecycle import Phase, ServerState
from inference_server.settings import ServerSettings


@dataclass
class AppContext:
    settings: ServerSettings
    state: ServerState
    metrics: ServerMetrics
    tracer: Any
    recent: RecentPredictions
    clock: Callable[[], datetime]
    store: FeedbackStore | None = None
    background: list[Any] = field(default_factory=list)


async def get_ctx(request: Request) -> AppContext:
    # async on purpose: FastAPI runs plain-def dependencies in a thread pool, a costly hop per request.
    ctx: AppContext = request.app.state.ctx
    return ctx


# Annotated dependencies (FastAPI's recommended style): handlers declare `ctx: Ctx`, `engine: Engine`.
Ctx = Annotated[AppContext, Depends(get_ctx)]


def not_ready_error(state: ServerState) -> ApiError:
    if state.phase is Phase.FAILED:
        return ApiError(503, state.error_code or "model_load_failed", state.error or "model failed to load")
    if state.phase is Phase.DRAINING:
        return ApiError(
            503, "draining", "server is shutting down; retry on another replica", headers={"Retry-After": "1"}
        )
    return ApiError(
        503, "not_ready", f"model is not ready yet (phase: {state.phase})", headers={"Retry-After": "1"}
    )


def engine_of(state: ServerState) -> InferenceEngine:
    """The engine, once warmed. While draining it still serves: a request already accepted finishes (the
    batcher itself refuses work, with 503 ``draining``, only once the lifespan has stopped it)."""
    if state.engine is None or state.phase not in (Phase.READY, Phase.DRAINING):
        raise not_ready_error(state)
    return state.engine


async def ready_engine(ctx: Ctx) -> InferenceEngine:
    return engine_of(ctx.state)


def release_ticket(request: Request) -> None:
    """Tell the batcher this request's work is submitted (or will never be): see serving/batching.py."""
    ticket = request.scope.get("state", {}).get("ticket")
    if ticket is not None:
        ticket.release()


Engine = Annotated[InferenceEngine, Depends(ready_engine)]
