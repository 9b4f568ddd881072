"""The inference hot path: normalise → encode → (micro-batched) forward → calibrate → answer.

One ``InferenceEngine`` per app. Every step after the forward pass is cheap numpy on one row; the
forward pass runs on the batcher's worker thread, so the event loop only ever does the light work.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.contract import Path, Span
from inference_server.feedback.recent import RecentPredictions
from inference_server.observability.logging import inference_fields, log_inference
from inference_server.observability.metrics import ServerMetrics
from inference_server.runtime.calibration import CalibrationParams
from inference_server.runtime.model import (
    LoadedModel,
    ModelLoadError,
    encode_ids,
    forward_ids,
    thread_setter,
)
from inference_server.serving.batching import MicroBatcher
from inference_server.serving.validation import (
    InputProblem,
    beyond_ordinary_length,
    check_token_count,
    normalise_text,
    precheck_length,
)


@dataclass(frozen=True)
class Prepared:
    request_id: str
    text: str
    ids: list[int]
    endpoint: str  # whose input-token series counts it, once it is answered


@dataclass(frozen=True)
class Answer:
    request_id: str
    label: str
    confidence: float
    scores: dict[str, float]
    n_tokens: int

    def to_dict(self, *, model_version: str, calibrated: bool, latency_ms: float) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "label": self.label,
            "confidence": self.confidence,
            "scores": self.scores,
            "calibrated": calibrated,
            "model_version": model_version,
            "tokens": self.n_tokens,
            "latency_ms": round(latency_ms, 3),
        }


def new_request_id() -> str:
    return uuid.uuid4().hex


def softmax_row(logits: np.ndarray, temperature: float) -> list[float]:
    """Probabilities of one logits row (temperature-scaled); float64 so they sum to 1 to 1e-12."""
    z = logits.astype(np.float64) / temperature
    e = np.exp(z - z.max())
    return (e / e.sum()).tolist()  # type: ignore[no-any-return]


class InferenceEngine:
    def __init__(
        self,
        model: LoadedModel,
        *,
        calibration: CalibrationParams | None,
        metrics: ServerMetrics,
        tracer: Any,
        recent: RecentPredictions,
        max_batch_size: int,
        max_batch_tokens: int,
        batch_wait_ms: float,
        threads: int = 1,
        workers: int = 0,
        endpoints: tuple[str, ...] = (Path.INFER,),
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.metrics = metrics
        self.tracer = tracer
        self.recent = recent
        self.labels = model.labels
        self.version = model.version
        self._temperature = calibration.temperature if calibration is not None else 1.0
        # Warm-up passes are not traffic: the batch-size and forward-latency series count users' work only.
        self.warming = False
        # What an empty text encodes to ([CLS] [SEP] for BERT): a text that encodes to no more holds only
        # characters this tokenizer drops (U+FFFD, a lone combining mark...), which text rules cannot know.
        self._bare_tokens = len(self._encode(""))
        metrics.declare_series(model.labels, endpoints=endpoints)
        self.batcher = MicroBatcher(
            self._forward,
            max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens,
            wait_ms=batch_wait_ms,
            on_batch=self._observe_batch,
            workers=workers or threads,  # 0: one single-threaded slice per thread
            threads=threads,
            set_threads=thread_setter(model),
        )

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        return forward_ids(self.model, batch)

    # --- steps ---------------------------------------------------------------------------------
    async def prepare(
        self, text: str, request_id: str | None, *, endpoint: str, field: str = "text"
    ) -> Prepared:
        """Validate and encode one text: on the event loop (microseconds) for an ordinary text; one
        longer than any ordinary text of MAX_TOKENS tokens on a thread."""
        with self.tracer.start_as_current_span(Span.PREPROCESS):
            clean = normalise_text(text, field=field)
            precheck_length(clean, self.model.max_tokens, field=field)
            if beyond_ordinary_length(clean, self.model.max_tokens):
                # Tokenizing costs ~2 µs a character: a 256 KiB body of punctuation or CJK (no spaces
                # for the pre-check to count) would hold the event loop for half a second. The thread
                # hop (~0.1 ms) is nothing next to the forward pass of a text this long.
                ids = await asyncio.to_thread(self._encode, clean)
            else:
                ids = self._encode(clean)
            check_token_count(len(ids), self.model.max_tokens, field=field)
            if len(ids) <= self._bare_tokens:
                # The model would classify its special tokens alone, and the answer would be counted and
                # kept for /feedback like a real prediction.
                reason = "has no character the model reads (its tokenizer drops them all)"
                raise InputProblem(422, "empty_text", reason, field)
        return Prepared(request_id or new_request_id(), clean, ids, endpoint)

    def _encode(self, text: str) -> list[int]:
        return encode_ids(self.model, [text])[0]

    def answer(self, prepared: Prepared, logits: np.ndarray) -> Answer:
        """The calibrated answer for one row of logits; nothing is recorded (see `deliver`)."""
        with self.tracer.start_as_current_span(Span.CALIBRATION) as span:
            span.set_attribute("calibrated", self.calibrated)
            probs = softmax_row(logits, self._temperature)
        best = max(range(len(probs)), key=probs.__getitem__)
        confidence = probs[best]
        if not math.isfinite(confidence):
            raise FloatingPointError("model produced non-finite logits")
        return Answer(
            prepared.request_id,
            self.labels[best],
            confidence,
            dict(zip(self.labels, probs, strict=True)),
            len(prepared.ids),
        )

    def deliver(self, pairs: Sequence[tuple[Prepared, Answer]]) -> None:
        """Count and remember answers that will be sent: only once every one of a request's answers
        exists, so a batch that fails on its last item leaves no prediction counted, no tokens, and
        no request id that /feedback could judge (and store the text of) for an answer never sent."""
        for prepared, answer in pairs:
            self.count_tokens(prepared)
            self.metrics.observe_prediction(answer.label, answer.confidence)
            self.recent.remember(
                prepared.request_id, answer.label, answer.confidence, self.version, prepared.text
            )

    def count_tokens(self, prepared: Prepared) -> None:
        self.metrics.observe_tokens(prepared.endpoint, len(prepared.ids))

    def log(self, answer: Answer, *, endpoint: str, latency_ms: float) -> None:
        log_inference(
            inference_fields(
                request_id=answer.request_id,
                model_version=self.version,
                label=answer.label,
                confidence=answer.confidence,
                latency_ms=latency_ms,
                endpoint=endpoint,
                n_tokens=answer.n_tokens,
                calibrated=self.calibrated,
            )
        )

    # --- whole requests ------------------------------------------------------------------------
    async def classify(self, prepared: Prepared) -> Answer:
        # The span covers the wait for a batch and the shared forward pass: what this request paid.
        with self.tracer.start_as_current_span(Span.INFERENCE_FORWARD) as span:
            span.set_attribute("tokens", len(prepared.ids))
            logits = await self.batcher.submit(prepared.ids)
        answer = self.answer(prepared, logits)
        self.deliver([(prepared, answer)])
        return answer

    async def classify_many(self, prepared: Sequence[Prepared]) -> list[Answer]:
        with self.tracer.start_as_current_span(Span.INFERENCE_FORWARD) as span:
            span.set_attribute("items", len(prepared))
            rows = await self.batcher.submit_many([p.ids for p in prepared])
        answers = [self.answer(p, row) for p, row in zip(prepared, rows, strict=True)]
        self.deliver(list(zip(prepared, answers, strict=True)))
        return answers

    def _observe_batch(self, n: int, _tokens: int, seconds: float) -> None:
        if not self.warming:
            self.metrics.observe_batch(n, seconds)

    async def warm_up(self, rounds: int = 2) -> None:
        """Exercise the real path (short, medium and longest inputs; alone, batched, and batched into
        slices on every forward worker) before turning ready, so the first user request does not pay
        for lazy initialisation in torch, ONNX Runtime (a session per thread count) or the tokenizer.

        ModelLoadError when the model answers the warm-up with NaN or infinite logits: each request
        would fail (a diverged fine-tune, a broken weight), and a READY server that answers every
        request 500 is a rollout the error-rate rule notices only after minutes."""
        max_len = max(2, self.model.max_tokens - 2)
        samples = ["ok", "warm up " * 8, " ".join(["warm"] * max_len)]
        sliced = self.batcher.workers * self.batcher.min_slice
        rows: list[np.ndarray] = []
        self.warming = True  # the server is not ready yet: every pass until it ends is the warm-up's
        try:
            for _ in range(rounds):
                prepared = []
                for text in samples:
                    ids = encode_ids(self.model, [text])[0][: self.model.max_tokens]
                    prepared.append(ids)
                together = await self.batcher.submit_many(prepared)
                rows += together
                rows += await asyncio.gather(*(self.batcher.submit(ids) for ids in prepared))
                if self.batcher.workers > 1:
                    rows += await self.batcher.submit_many([prepared[i % 2] for i in range(sliced)])
            if not all(np.isfinite(row).all() for row in rows):
                raise ModelLoadError(
                    f"MODEL_PATH={self.model.path}: the model gives non-finite logits (NaN or inf) on the "
                    "warm-up texts, so every request would fail: its weights are broken (a diverged "
                    "fine-tune?); point MODEL_PATH at a model that evaluates cleanly"
                )
            if not self.model.quantized:  # dynamic INT8 depends on its batch companions by design
                await self._check_batching(prepared, together)
        finally:
            self.warming = False

    async def _check_batching(self, prepared: list[list[int]], together: Sequence[np.ndarray]) -> None:
        """fp32 answers must not depend on batching: each warm-up text alone against ``together``, the
        rows of all of them in one padded pass. A model that reads padding (a decoder whose pad id is not
        the one it skips, say) would otherwise answer every batched request wrong, silently; fp32 noise
        is ~1e-5 here."""
        for ids, row in zip(prepared, together, strict=True):
            alone = await self.batcher.submit(ids)  # one at a time: a batch of one
            if not np.allclose(row, alone, rtol=1e-3, atol=1e-2):
                raise ModelLoadError(
                    f"MODEL_PATH={self.model.path}: a text's logits change when it is batched with longer "
                    f"ones ({np.round(alone, 4).tolist()} alone, {np.round(row, 4).tolist()} batched): the "
                    "model reads its padding; make the tokenizer's pad token the one the model skips "
                    "(config.json pad_token_id)"
                )
