"""Request and response bodies (the OpenAPI at /docs is generated from these)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference_server.contract import FeedbackOutcome
from inference_server.runtime.saliency import MAX_STEPS
from inference_server.serving.limits import BODY_IDLE_TIMEOUT_S

RequestId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="Client-chosen id (letters, digits, . _ : -); generated when absent",
        examples=["req-42"],
    ),
]
Text = Annotated[
    str,
    Field(
        description="The text to classify (NFC-normalised; control characters become spaces)",
        examples=["I loved this film"],
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferRequest(_Strict):
    text: Text
    request_id: RequestId | None = None


class BatchRequest(_Strict):
    items: list[InferRequest] = Field(description="Texts to classify; results come back in this order")


class ExplainRequest(_Strict):
    text: Text
    request_id: RequestId | None = None
    method: Literal["grad_x_input", "integrated_gradients"] = "grad_x_input"
    # strict: pydantic's lax mode would take `true` as 1 step (and 20.0 as 20); JSON integers only.
    steps: int = Field(
        20, ge=1, le=MAX_STEPS, strict=True, description="Integration steps (integrated_gradients only)"
    )
    # Bounded like FeedbackRequest.label: the 422 unknown_label message repeats it.
    target_label: str | None = Field(
        None, min_length=1, max_length=128, description="Label to explain (default: the predicted one)"
    )


class FeedbackRequest(_Strict):
    request_id: RequestId
    label: str = Field(min_length=1, max_length=128, description="The true label (one of the model's labels)")


class InferResponse(BaseModel):
    request_id: str
    label: str
    confidence: float = Field(description="Probability of `label` (temperature-scaled when calibrated)")
    scores: dict[str, float] = Field(description="Probability per label")
    calibrated: bool
    model_version: str
    tokens: int = Field(description="Tokens in the input, special tokens included")
    latency_ms: float


class BatchResponse(BaseModel):
    results: list[InferResponse]
    model_version: str
    latency_ms: float


class TokenScore(BaseModel):
    token: str
    score: float


class ExplainResponse(BaseModel):
    request_id: str
    label: str
    method: str
    tokens: list[TokenScore]
    model_version: str
    latency_ms: float


class FeedbackResponse(BaseModel):
    request_id: str
    outcome: FeedbackOutcome
    predicted: str
    label: str
    stored: bool = Field(description="True when the sample was kept (anonymised) for review")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: list[dict[str, object]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: str
    model_version: str
    labels: list[str] = []
    quantized: bool = False
    calibrated: bool = False
    max_tokens: int = 0
    torch_threads: int = 0
    forward_workers: int = 1


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` for the documented error statuses of an endpoint."""
    text = {
        408: f"No part of the body arrived for {BODY_IDLE_TIMEOUT_S:g} s (request_timeout); the connection "
        "is closed",
        413: "Body over MAX_BODY_BYTES, text over MAX_TOKENS tokens, or too many batch items",
        415: "Content-Type is not application/json",
        422: "Malformed JSON, schema violation, empty text or invalid Unicode (the field is named)",
        404: "Unknown request id: expired from memory, never served here, or already judged",
        429: "Rate limit of this endpoint exceeded; see Retry-After",
        503: "Model not loaded/warmed yet, or the server is draining",
    }
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying (an integer, at least 1); a 503 for a model "
            "that failed to load has none, as retrying this replica will not help",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return {
        c: {
            "model": ErrorResponse,
            "description": text.get(c, "Error"),
            **({"headers": retry_after} if c in (429, 503) else {}),
        }
        for c in codes
    }
