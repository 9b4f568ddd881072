"""GET /metrics: Prometheus exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from inference_server.api.deps import Ctx
from inference_server.contract import Path
from inference_server.observability.metrics import EXPOSITION_CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get(
    Path.METRICS,
    response_class=Response,
    summary="Prometheus metrics (text exposition format)",
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.exposition(), media_type=EXPOSITION_CONTENT_TYPE)
