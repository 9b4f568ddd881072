"""POST /explain (only with enable_explainability): per-token saliency for the predicted label.

The label explained (unless the request names one) is the one /infer answers: the served model's
prediction, from the INT8 model under enable_quantized_model. Its saliency is computed on the fp32
weights kept for gradients (``gradients_from`` says which), a bounded pass at a time on the forward
workers, each pass after whatever inference is queued (serving/batching.py). An explanation costs up
to ~50 passes of a second each on a long text, so at most MAX_EXPLANATIONS_IN_FLIGHT run or wait at
once; the next is refused 429 ``explain_busy`` rather than let explanations pile up on the workers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from inference_server.api.deps import Ctx, Engine
from inference_server.api.errors import ApiError
from inference_server.api.middleware import request_start
from inference_server.api.responses import JSONBytes
from inference_server.api.schemas import ExplainRequest, ExplainResponse, TokenScore, error_responses
from inference_server.contract import Path, Span
from inference_server.runtime.model import LoadedModel
from inference_server.runtime.saliency import Explanation, advance, convergence, explain_passes
from inference_server.serving.engine import InferenceEngine, Prepared
from inference_server.serving.lifecycle import ServerState

router = APIRouter(tags=["explain"])

# Explanations running or waiting for the forward workers at once, per replica. A module constant
# rather than a setting (inference_server/settings.py): two keep the workers busy between inference
# batches while a third would only wait; the rate limit (RATE_LIMIT_EXPLAIN_PER_SECOND) counts
# requests, not their cost.
MAX_EXPLANATIONS_IN_FLIGHT = 2
BUSY_RETRY_AFTER_S = 1
GradientsFrom = Literal["served_model", "fp32_copy"]


class ExplainedToken(TokenScore):
    start: int | None = Field(
        None,
        description="Where the token starts in the text as the server normalised it (NFC, control "
        "characters as spaces), in characters (code points); absent without a fast tokenizer",
    )
    end: int | None = Field(None, description="Where it ends (exclusive), like `start`")


class ConvergenceCheck(BaseModel):
    """integrated_gradients only: the completeness check (Sundararajan et al., 2017)."""

    scores_sum: float = Field(description="Sum of the scores of every position, [CLS]/[SEP] included")
    logit_delta: float = Field(description="Logit of `label` at the input minus at the all-zero baseline")
    delta: float = Field(description="scores_sum − logit_delta: near 0 when the steps suffice")
    added_tokens_score: float = Field(
        description="The part of scores_sum on the positions the tokenizer added ([CLS], [SEP]), which "
        "`tokens` leaves out"
    )
    added_tokens_share: float = Field(description="Their share of the attribution: Σ|left out| / Σ|all|")


class ExplainAnswer(ExplainResponse):
    tokens: list[ExplainedToken]  # type: ignore[assignment]  # the same fields, and optional spans
    gradients_from: GradientsFrom | None = Field(
        None,
        description="The weights the gradients were computed on: the served model itself, or the fp32 "
        "copy kept beside a served INT8 model (whose prediction still chose `label`)",
    )
    convergence: ConvergenceCheck | None = Field(None, description="integrated_gradients only")


@contextlib.contextmanager
def explanation_slot(state: ServerState, limit: int) -> Iterator[None]:
    """One of ``limit`` places for an explanation running or waiting, or 429 ``explain_busy``."""
    if state.explaining >= limit:
        raise ApiError(
            429,
            "explain_busy",
            f"{limit} explanations are already running or waiting on this replica; retry later",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )
    state.explaining += 1
    try:
        yield
    finally:
        state.explaining -= 1


async def served_label(engine: InferenceEngine, prepared: Prepared) -> str:
    """The label /infer answers for this text (the served model's prediction, INT8 or not). Nothing is
    recorded: it is no served prediction."""
    logits = await engine.batcher.submit(prepared.ids)
    return engine.answer(prepared, logits).label


def response_body(
    result: Explanation,
    *,
    request_id: str,
    model_version: str,
    gradients_from: GradientsFrom,
    latency_ms: float,
) -> dict[str, Any]:
    tokens: list[dict[str, Any]] = [
        {"token": t, "score": s} for t, s in zip(result.tokens, result.scores, strict=True)
    ]
    if result.offsets is not None:
        for token, (start, end) in zip(tokens, result.offsets, strict=True):
            token["start"], token["end"] = start, end
    body: dict[str, Any] = {
        "request_id": request_id,
        "label": result.label,
        "method": result.method,
        "tokens": tokens,
        "model_version": model_version,
        "latency_ms": round(latency_ms, 3),
        "gradients_from": gradients_from,
    }
    check = convergence(result)
    if check is not None:
        body["convergence"] = asdict(check)
    return body


async def _saliency(
    engine: InferenceEngine, fp32: LoadedModel, text: str, label: str | None, body: ExplainRequest
) -> Explanation:
    passes = explain_passes(fp32, text, method=body.method, target_label=label, steps=body.steps)
    # One bounded pass per turn on the forward worker: queued inference batches run before each one.
    while (result := await engine.batcher.run_exclusive(advance, passes)) is None:
        pass
    return result


def _documented_errors() -> dict[int | str, dict[str, object]]:
    responses = error_responses(408, 413, 415, 422, 429, 503)
    responses[429] = {
        **responses[429],
        "description": "Rate limit of this endpoint exceeded (`rate_limited`), or "
        f"{MAX_EXPLANATIONS_IN_FLIGHT} explanations already running or waiting (`explain_busy`); "
        "see Retry-After",
    }
    return responses


@router.post(
    Path.EXPLAIN,
    response_model=ExplainAnswer,
    responses=_documented_errors(),
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
    with (
        explanation_slot(ctx.state, MAX_EXPLANATIONS_IN_FLIGHT),
        engine.tracer.start_as_current_span(Span.INFERENCE_FORWARD) as span,
    ):
        span.set_attribute("saliency.method", body.method)
        # fp32 serving explains its own prediction (the saliency pass computes it): no extra pass.
        quantized = engine.model.quantized
        label = body.target_label or (await served_label(engine, prepared) if quantized else None)
        result = await _saliency(engine, fp32, prepared.text, label, body)
        span.set_attribute("saliency.steps", body.steps if body.method == "integrated_gradients" else 1)
    # Its input tokens count like any answered text's; it is no served prediction, so it adds none to
    # the predictions, confidence or feedback series (nor an inference log line).
    engine.count_tokens(prepared)
    latency_ms = (time.perf_counter() - start) * 1000.0
    with engine.tracer.start_as_current_span(Span.RESPONSE_SERIALIZE):
        return JSONBytes(
            response_body(
                result,
                request_id=prepared.request_id,
                model_version=engine.version,
                gradients_from="fp32_copy" if engine.model.quantized else "served_model",
                latency_ms=latency_ms,
            )
        )
