"""POST /feedback: the true label for a recent request id → outcome metric (+ anonymised sample if wrong)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from inference_server.api.deps import Ctx, Engine
from inference_server.api.errors import ApiError
from inference_server.api.responses import JSONBytes
from inference_server.api.schemas import FeedbackRequest, FeedbackResponse, error_responses
from inference_server.contract import FeedbackOutcome, Path

router = APIRouter(tags=["feedback"])


def judge(predicted: str, true_label: str) -> FeedbackOutcome:
    return FeedbackOutcome.CORRECT if predicted == true_label else FeedbackOutcome.INCORRECT


@router.post(
    Path.FEEDBACK,
    response_model=FeedbackResponse,
    responses=error_responses(404, 413, 415, 422, 429, 503),
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
    prediction = ctx.recent.pop(body.request_id)
    if prediction is None:
        raise ApiError(
            404,
            "unknown_request_id",
            f"no recent prediction with request_id {body.request_id!r} (expired, never made here,"
            " or feedback already recorded)",
            field="request_id",
        )
    outcome = judge(prediction.label, body.label)
    ctx.metrics.observe_feedback(body.label, prediction.label, outcome)
    stored = False
    if outcome is FeedbackOutcome.INCORRECT and ctx.store is not None:
        await asyncio.to_thread(
            ctx.store.add_misclassified,
            request_id=prediction.request_id,
            text=prediction.text,
            predicted=prediction.label,
            true_label=body.label,
            confidence=prediction.confidence,
            model_version=prediction.model_version,
            now=ctx.clock(),
        )
        stored = True
    return JSONBytes(
        {
            "request_id": body.request_id,
            "outcome": str(outcome),
            "predicted": prediction.label,
            "label": body.label,
            "stored": stored,
        }
    )
