"""Baseline (a) of the benchmark: what a user writes first — a FastAPI endpoint that calls a
``transformers.pipeline("text-classification")`` per request.

Deliberately plain: the pipeline is built once at import, the endpoint is a synchronous ``def`` (the
FastAPI docs' advice for blocking code, so Starlette runs it in its thread pool), no batching, no
thread settings. Run it as the benchmark does:

    NAIVE_MODEL_PATH=/path/to/model uvicorn inference_server.bench.naive_app:app --port 8001
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["NAIVE_MODEL_PATH"])  # KeyError names it
app = FastAPI(title="naive sentiment baseline")


class Item(BaseModel):
    text: str


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/infer")
def infer(item: Item) -> dict[str, Any]:
    result = classifier(item.text)[0]
    return {"label": result["label"], "score": float(result["score"])}
