"""POST /feedback: the true label for a recent request id → outcome metric (+ anonymised sample if wrong).

An outcome is recorded all or nothing: it is counted, and its request id used up, only once the sample
is stored (or, for a correct prediction, at once: nothing is stored). When the store cannot take the
sample (database locked, full or failing; too many writes waiting) the answer is 503
``feedback_store_unavailable`` with Retry-After, nothing is counted, and the same feedback may be sent
again.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from fastapi import APIRouter
from starlette.responses import Response

from inference_server.api.deps import AppContext, Ctx, Engine
from inference_server.api.errors import ApiError
from inference_server.api.responses import JSONBytes
from inference_server.api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse, error_responses
from inference_server.contract import FeedbackOutcome, Path
from inference_server.feedback.recent import Prediction
from inference_server.feedback.store import FeedbackStoreUnavailable

log = logging.getLogger(__name__)
router = APIRouter(tags=["feedback"])
STORE_RETRY_AFTER_S = 1
_RESPONSES = {
    **error_responses(404, 408, 413, 415, 422, 429, 503),
    409: {"model": ErrorResponse, "description": "Feedback for this request id is being recorded right now"},
    503: {
        **error_responses(503)[503],
        "description": "Model not ready, server draining, or the feedback store cannot take the sample"
        " now (feedback_store_unavailable: nothing was recorded; send it again)",
    },
}


def judge(predicted: str, true_label: str) -> FeedbackOutcome:
    return FeedbackOutcome.CORRECT if predicted == true_label else FeedbackOutcome.INCORRECT


def _unknown(request_id: str) -> ApiError:
    return ApiError(
        404,
        "unknown_request_id",
        f"no recent prediction with request_id {request_id!r} (expired, never made here,"
        " or feedback already recorded)",
        field="request_id",
    )


def _in_progress(request_id: str) -> ApiError:
    return ApiError(
        409,
        "feedback_in_progress",
        f"feedback for request_id {request_id!r} is being recorded by another request",
        field="request_id",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def _store_unavailable() -> ApiError:
    return ApiError(
        503,
        "feedback_store_unavailable",
        "the feedback store cannot take the sample now; nothing was recorded, send the same feedback again",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def _store(ctx: AppContext, prediction: Prediction, true_label: str) -> None:
    """Keep the misclassified sample, or raise the 503 (the reason logged, never the text)."""
    assert ctx.store is not None
    try:
        await ctx.store.on_own_thread(
            partial(
                ctx.store.add_misclassified,
                request_id=prediction.request_id,
                text=prediction.text,
                predicted=prediction.label,
                true_label=true_label,
                confidence=prediction.confidence,
                model_version=prediction.model_version,
                now=ctx.clock(),
            )
        )
    except FeedbackStoreUnavailable as exc:
        log.warning("feedback not stored: %s", exc, extra={"fields": {"event": "feedback_store_unavailable"}})
        raise _store_unavailable() from exc


@router.post(
    Path.FEEDBACK,
    response_model=FeedbackResponse,
    responses=_RESPONSES,
    summary="Record the true label of a recent prediction",
)
async def feedback(
    body: FeedbackRequest,
    engine: Engine,
    ctx: Ctx,
) -> Response:
    if body.label not in engine.labels:
        raise ApiError(
            422, "unknown_label", f"label {body.label!r} is not one of {list(engine.labels)}", field="label"
        )
    prediction = ctx.recent.claim(body.request_id)
    if prediction is None:
        raise _in_progress(body.request_id) if ctx.recent.held(body.request_id) else _unknown(body.request_id)
    outcome = judge(prediction.label, body.label)
    stored = outcome is FeedbackOutcome.INCORRECT and ctx.store is not None

    def record() -> None:
        ctx.recent.settle(prediction)
        ctx.metrics.observe_feedback(body.label, prediction.label, outcome)

    def record_if_written(write: asyncio.Future[None]) -> None:
        if write.cancelled() or write.exception() is not None:
            ctx.recent.release(prediction)  # not stored: the same feedback may be sent again
        else:
            record()

    if stored:
        write = asyncio.ensure_future(_store(ctx, prediction, body.label))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # The client went away mid-write. The row may still commit, so its outcome decides: giving
            # the id back now would let a retry store the sample twice.
            write.add_done_callback(record_if_written)
            raise
        except BaseException:  # the 503: nothing stored, the id stays usable for a retry
            ctx.recent.release(prediction)
            raise
    record()
    return JSONBytes(
        {
            "request_id": body.request_id,
            "outcome": str(outcome),
            "predicted": prediction.label,
            "label": body.label,
            "stored": stored,
        }
    )
