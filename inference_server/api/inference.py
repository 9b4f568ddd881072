"""POST /infer and POST /infer/batch (the latter only when ENABLE_BATCH).

Both are `FastPathRoute`s (api/fastpath.py): documented like any FastAPI route, served without
FastAPI's per-request dependency injection, because they are the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from inference_server.api.deps import Engine, release_ticket
from inference_server.api.fastpath import FastPathRoute
from inference_server.api.middleware import request_start
from inference_server.api.responses import JSONBytesThen
from inference_server.api.schemas import (
    BatchRequest,
    BatchResponse,
    InferRequest,
    InferResponse,
    error_responses,
)
from inference_server.contract import Path, Span
from inference_server.serving.validation import InputProblem, check_batch_items

router = APIRouter(tags=["inference"], route_class=FastPathRoute)
batch_router = APIRouter(tags=["inference"], route_class=FastPathRoute)


def check_unique_request_ids(request_ids: Sequence[str | None]) -> None:
    """Refuse (422 ``duplicate_request_id``, naming the later item) a batch that gives one request id to
    two items: /feedback judges by request id, and would judge the wrong one of them."""
    first: dict[str, int] = {}
    for i, request_id in enumerate(request_ids):
        if request_id is None:
            continue  # generated: unique
        if request_id in first:
            raise InputProblem(
                422,
                "duplicate_request_id",
                f"repeats the request_id of items[{first[request_id]}]; give each item its own",
                f"items[{i}].request_id",
            )
        first[request_id] = i


@router.post(
    Path.INFER,
    response_model=InferResponse,
    responses=error_responses(408, 413, 415, 422, 429, 503),
    summary="Classify one text",
)
async def infer(
    body: InferRequest,
    request: Request,
    engine: Engine,
) -> Response:
    start = request_start(request)
    try:
        prepared = await engine.prepare(body.text, body.request_id, endpoint=Path.INFER)
    finally:
        release_ticket(request)
    answer = await engine.classify(prepared)
    latency_ms = (time.perf_counter() - start) * 1000.0
    with engine.tracer.start_as_current_span(Span.RESPONSE_SERIALIZE):
        return JSONBytesThen(
            answer.to_dict(model_version=engine.version, calibrated=engine.calibrated, latency_ms=latency_ms),
            after_send=lambda: engine.log(answer, endpoint=Path.INFER, latency_ms=latency_ms),
        )


@batch_router.post(
    Path.INFER_BATCH,
    response_model=BatchResponse,
    responses=error_responses(408, 413, 415, 422, 429, 503),
    summary="Classify several texts; results in input order",
)
async def infer_batch(
    body: BatchRequest,
    request: Request,
    engine: Engine,
) -> Response:
    start = request_start(request)
    limit: int = request.app.state.ctx.settings.max_batch_items
    try:
        check_batch_items(len(body.items), limit)
        check_unique_request_ids([item.request_id for item in body.items])
        prepared = [
            await engine.prepare(
                item.text, item.request_id, endpoint=Path.INFER_BATCH, field=f"items[{i}].text"
            )
            for i, item in enumerate(body.items)
        ]
    finally:
        release_ticket(request)
    answers = await engine.classify_many(prepared)
    latency_ms = (time.perf_counter() - start) * 1000.0

    def write_logs() -> None:
        for a in answers:
            engine.log(a, endpoint=Path.INFER_BATCH, latency_ms=latency_ms)

    with engine.tracer.start_as_current_span(Span.RESPONSE_SERIALIZE):
        return JSONBytesThen(
            {
                "results": [
                    a.to_dict(
                        model_version=engine.version, calibrated=engine.calibrated, latency_ms=latency_ms
                    )
                    for a in answers
                ],
                "model_version": engine.version,
                "latency_ms": round(latency_ms, 3),
            },
            after_send=write_logs,
        )
