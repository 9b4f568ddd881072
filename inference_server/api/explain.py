"""POST /explain (only with enable_explainability): per-token saliency for the predicted label."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from inference_server.api.deps import Ctx, Engine
from inference_server.api.errors import ApiError
from inference_server.api.middleware import request_start
from inference_server.api.responses import JSONBytes
from inference_server.api.schemas import ExplainRequest, ExplainResponse, error_responses
from inference_server.contract import Path, Span
from inference_server.runtime.saliency import advance, explain_passes

router = APIRouter(tags=["explain"])


@router.post(
    Path.EXPLAIN,
    response_model=ExplainResponse,
    responses=error_responses(413, 415, 422, 429, 503),
    summary="Per-token saliency (gradient × input or integrated gradients)",
)
async def explain(
    body: ExplainRequest,
    request: Request,
    engine: Engine,
    ctx: Ctx,
) -> Response:
    start = request_start(request)
    fp32 = ctx.state.explain_model
    if fp32 is None:  # enabled routes imply it; guard against a half-started state anyway
        raise ApiError(503, "not_ready", "explainability model is not loaded")
    if body.target_label is not None and body.target_label not in engine.labels:
        raise ApiError(
            422,
            "unknown_label",
            f"target_label {body.target_label!r} is not one of {list(engine.labels)}",
            field="target_label",
        )
    prepared = await engine.prepare(body.text, body.request_id, endpoint=Path.EXPLAIN)
    with engine.tracer.start_as_current_span(Span.INFERENCE_FORWARD) as span:
        span.set_attribute("saliency.method", body.method)
        passes = explain_passes(
            fp32, prepared.text, method=body.method, target_label=body.target_label, steps=body.steps
        )
        # One bounded pass per turn on the forward worker: inference batches run between the passes.
        while (result := await engine.batcher.run_exclusive(advance, passes)) is None:
            pass
        span.set_attribute("saliency.steps", body.steps if body.method == "integrated_gradients" else 1)
    # Its input tokens count like any answered text's; it is no served prediction, so it adds none to
    # the predictions, confidence or feedback series (nor an inference log line).
    engine.count_tokens(prepared)
    latency_ms = (time.perf_counter() - start) * 1000.0
    with engine.tracer.start_as_current_span(Span.RESPONSE_SERIALIZE):
        return JSONBytes(
            {
                "request_id": prepared.request_id,
                "label": result.label,
                "method": result.method,
                "tokens": [
                    {"token": t, "score": s} for t, s in zip(result.tokens, result.scores, strict=True)
                ],
                "model_version": engine.version,
                "latency_ms": round(latency_ms, 3),
            }
        )
