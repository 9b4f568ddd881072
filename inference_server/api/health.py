"""GET /healthz (the process is alive) and GET /readyz (model loaded and warmed); HEAD on both."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from inference_server.api.deps import Ctx, not_ready_error
from inference_server.api.errors import ApiError
from inference_server.api.responses import JSONBytes, error_response
from inference_server.api.schemas import HealthResponse, ReadyResponse, error_responses
from inference_server.contract import Path
from inference_server.serving.lifecycle import Phase

router = APIRouter(tags=["health"])


@router.get(Path.HEALTHZ, response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> Response:
    return JSONBytes({"status": "ok"})


# HEAD as well (RFC 9110 §9.1; some uptime checkers and load balancers probe with it): FastAPI, unlike
# Starlette, adds no HEAD route of its own. Kept out of the OpenAPI document, where a second method on the
# same function would duplicate its operationId; uvicorn sends the headers and drops the body.
router.add_api_route(Path.HEALTHZ, healthz, methods=["HEAD"], include_in_schema=False)


@router.get(
    Path.READYZ,
    response_model=ReadyResponse,
    responses=error_responses(503),
    summary="Readiness: the model is loaded and warmed",
)
async def readyz(ctx: Ctx) -> Response:
    state = ctx.state
    if state.phase is not Phase.READY or state.engine is None:
        err: ApiError = not_ready_error(state)
        return error_response(503, err.code, err.message, headers=err.headers)
    engine = state.engine
    return JSONBytes(
        {
            "status": "ready",
            "model_version": engine.version,
            "labels": list(engine.labels),
            "quantized": engine.model.quantized,
            "calibrated": engine.calibrated,
            "max_tokens": engine.model.max_tokens,
            "torch_threads": state.torch_threads,
            "forward_workers": engine.batcher.workers,
        }
    )


router.add_api_route(Path.READYZ, readyz, methods=["HEAD"], include_in_schema=False)
