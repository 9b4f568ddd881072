"""API behaviour on the tiny model: answers, every documented error, metrics, spans, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.feedback.review import TRUNCATED
from inference_server.feedback.store import MAX_QUEUED
from inference_server.observability.logging import INFERENCE_LOGGER, JsonFormatter
from inference_server.serving import engine as engine_module
from inference_server.serving.lifecycle import Phase
from inference_server.settings import ServerSettings

from .conftest import Spans, serving, settings_for, wait_phase

JSON = {"content-type": "application/json"}


def error_of(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "label"), [("i love this great film", "positive"), ("awful and terrible", "negative")]
)
def test_infer_classifies_and_reports_everything(api: TestClient, text: str, label: str) -> None:
    r = api.post(c.Path.INFER, json={"text": text, "request_id": "abc-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == label
    assert body["request_id"] == "abc-1"
    assert body["model_version"] == "test-v1"
    assert body["calibrated"] is False
    assert set(body["scores"]) == {"negative", "positive"}
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-9)
    assert body["confidence"] == max(body["scores"].values())
    assert body["tokens"] == len(text.split()) + 2  # [CLS] … [SEP]
    assert body["latency_ms"] > 0


def test_request_id_is_generated_when_absent(api: TestClient) -> None:
    ids = {api.post(c.Path.INFER, json={"text": "good"}).json()["request_id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)


def test_batch_answers_in_input_order(api: TestClient) -> None:
    texts = ["great", "awful", "i love it", "terrible and boring", "excellent"]
    r = api.post(
        c.Path.INFER_BATCH, json={"items": [{"text": t, "request_id": f"b{i}"} for i, t in enumerate(texts)]}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["request_id"] for x in results] == [f"b{i}" for i in range(len(texts))]
    assert [x["label"] for x in results] == ["positive", "negative", "positive", "negative", "positive"]
    singles = [api.post(c.Path.INFER, json={"text": t}).json() for t in texts]
    for one, many in zip(singles, results, strict=True):
        assert one["label"] == many["label"]
        assert one["confidence"] == pytest.approx(many["confidence"], abs=1e-5)


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
def test_explain_points_at_the_sentiment_word(api: TestClient, method: str) -> None:
    r = api.post(c.Path.EXPLAIN, json={"text": "the film was great", "method": method, "steps": 16})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "positive" and body["method"] == method
    tokens = [t["token"] for t in body["tokens"]]
    assert tokens == ["the", "film", "was", "great"]  # special tokens left out
    assert all(isinstance(t["score"], float) for t in body["tokens"])
    if method == "integrated_gradients":  # grad × input is a local, noisier signal on a 60-step model
        best = max(body["tokens"], key=lambda t: t["score"])
        assert best["token"] == "great"


def test_explain_unknown_target_label_is_422(api: TestClient) -> None:
    r = api.post(c.Path.EXPLAIN, json={"text": "great", "target_label": "neutral"})
    assert r.status_code == 422
    assert error_of(r)["field"] == "target_label"


def test_nfc_and_control_characters_are_normalised(api: TestClient) -> None:
    decomposed = unicodedata.normalize("NFD", "café great")
    composed = unicodedata.normalize("NFC", "café great")
    a = api.post(c.Path.INFER, json={"text": decomposed}).json()
    b = api.post(c.Path.INFER, json={"text": composed}).json()
    assert a["scores"] == b["scores"] and a["tokens"] == b["tokens"]
    with_controls = api.post(c.Path.INFER, json={"text": "great\x00\x07film\x1b"}).json()
    spaced = api.post(c.Path.INFER, json={"text": "great  film "}).json()
    assert with_controls["scores"] == spaced["scores"]


# --- errors -------------------------------------------------------------------------------------
def test_wrong_content_type_is_415(api: TestClient) -> None:
    r = api.post(c.Path.INFER, content=b'{"text": "great"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert error_of(r)["code"] == "unsupported_media_type"
    r = api.post(c.Path.INFER, content=b'{"text": "great"}')  # no content type at all
    assert r.status_code == 415


def test_declared_oversized_body_is_413_without_reading_it(api: TestClient) -> None:
    limit = api.app.state.ctx.settings.max_body_bytes  # type: ignore[attr-defined]
    r = api.post(c.Path.INFER, content=b"x" * 10, headers={**JSON, "content-length": str(limit + 1)})
    assert r.status_code == 413
    assert error_of(r)["code"] == "payload_too_large"


def test_streamed_oversized_body_is_413_while_counting(api: TestClient) -> None:
    """A chunked body over the limit is 413 naming the body. (TestClient hands the app the whole body at
    once, so that the guard stops reading early is shown in test_guard_reading.py.)"""
    limit = api.app.state.ctx.settings.max_body_bytes  # type: ignore[attr-defined]

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"text": "'
        for _ in range(limit // 1024 + 50):
            yield b"a" * 1024

    r = api.post(c.Path.INFER, content=chunks(), headers=JSON)  # chunked: no Content-Length
    assert r.status_code == 413
    assert error_of(r)["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"text": ', "body"),
        (b"[]", "body"),
        (b'{"txt": "great"}', "text"),
        (b'{"text": 5}', "text"),
        (b'{"text": "great", "request_id": "has space"}', "request_id"),
        (b'{"text": "great", "extra": 1}', "extra"),
        (b'{"items": [{"text": "a"}, {"text": 3}]}', "text"),
    ],
)
def test_malformed_or_invalid_json_is_422_naming_the_field(api: TestClient, body: bytes, field: str) -> None:
    r = api.post(c.Path.INFER, content=body, headers=JSON)
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["code"] == "invalid_request"
    assert err["field"] == field or any(d["field"] == field for d in err["details"])


DEEP = 5000  # deeper than Python's recursion limit: json.loads raises RecursionError, not a syntax error


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (c.Path.INFER, b'{"text": "a", "request_id": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        (c.Path.INFER_BATCH, b'{"items": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        (c.Path.FEEDBACK, b'{"request_id": "r", "label": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        (c.Path.EXPLAIN, b'{"text": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        (c.Path.INFER, b'{"text": "a", "request_id": ' + b"9" * 5000 + b"}"),  # over int()'s digit limit
    ],
)
def test_bodies_json_cannot_read_are_422_on_every_endpoint(api: TestClient, path: str, body: bytes) -> None:
    """Never a 500 (an error rate the rollout gate would count against the model) nor FastAPI's 400."""
    r = api.post(path, content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert error_of(r)["code"] == "invalid_request" and error_of(r)["field"] == "body"


def test_batch_schema_error_names_the_item(api: TestClient) -> None:
    r = api.post(c.Path.INFER_BATCH, json={"items": [{"text": "a"}, {"text": 3}]})
    assert r.status_code == 422
    assert error_of(r)["field"] == "items[1].text"


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01", "\n\t"])
def test_empty_text_is_422(api: TestClient, text: str) -> None:
    r = api.post(c.Path.INFER, json={"text": text})
    assert r.status_code == 422
    assert error_of(r) == {"code": "empty_text", "field": "text", "message": error_of(r)["message"]}


def test_text_over_max_tokens_is_413_counted_in_tokens(api: TestClient) -> None:
    max_tokens = api.get(c.Path.READYZ).json()["max_tokens"]
    fits = " ".join(["great"] * (max_tokens - 2))  # + [CLS] and [SEP] = exactly the limit
    assert api.post(c.Path.INFER, json={"text": fits}).status_code == 200
    r = api.post(c.Path.INFER, json={"text": fits + " great"})
    assert r.status_code == 413
    err = error_of(r)
    assert err["code"] == "too_many_tokens" and str(max_tokens + 1) in err["message"]
    # Characters are not tokens: a long word the tokenizer maps to one token is fine.
    assert api.post(c.Path.INFER, json={"text": "x" * 2000}).status_code == 200


def test_texts_the_word_precheck_cannot_see_are_tokenized_off_the_event_loop(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of punctuation has no spaces for the pre-check to count; tokenizing 100k of it takes
    ~0.2 s, which must not stall every other request on the event loop."""
    on_loop: list[bool] = []

    def encode_ids(m: Any, texts: Any) -> list[list[int]]:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(m, texts)

    real = engine_module.encode_ids
    monkeypatch.setattr(engine_module, "encode_ids", encode_ids)
    r = api.post(c.Path.INFER, json={"text": "!" * 100_000})
    assert r.status_code == 413 and error_of(r)["code"] == "too_many_tokens"
    assert api.post(c.Path.INFER, json={"text": "a great film"}).status_code == 200
    assert on_loop == [False, True]  # the huge text on a thread, the ordinary one inline


def test_batch_item_errors_name_the_item(api: TestClient) -> None:
    r = api.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}, {"text": " "}]})
    assert r.status_code == 422
    assert error_of(r)["field"] == "items[1].text"


def test_batch_with_a_repeated_request_id_is_422_naming_the_later_item(api: TestClient) -> None:
    """Feedback judges by request id: two items under one id would let it judge (and store) the wrong
    one. Nothing of the refused batch is remembered."""
    items = [
        {"text": "awful terrible film", "request_id": "dup"},
        {"text": "fine", "request_id": "other"},
        {"text": "great"},
        {"text": "great wonderful film", "request_id": "dup"},
    ]
    r = api.post(c.Path.INFER_BATCH, json={"items": items})
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["code"] == "duplicate_request_id" and err["field"] == "items[3].request_id"
    assert "items[0]" in err["message"]
    assert api.post(c.Path.FEEDBACK, json={"request_id": "dup", "label": "negative"}).status_code == 404
    # Ids left to the server are all distinct, however many items have none.
    r = api.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}, {"text": "awful"}]})
    assert r.status_code == 200


def test_batch_over_item_limit_is_413_and_empty_batch_422(api: TestClient) -> None:
    r = api.post(c.Path.INFER_BATCH, json={"items": [{"text": "great"}] * 9})  # limit 8 in the fixture
    assert r.status_code == 413 and error_of(r)["code"] == "too_many_items"
    r = api.post(c.Path.INFER_BATCH, json={"items": []})
    assert r.status_code == 422 and error_of(r)["code"] == "empty_batch"


def test_invalid_utf8_and_lone_surrogates_are_422(api: TestClient) -> None:
    r = api.post(c.Path.INFER, content=b'{"text": "gr\xffeat"}', headers=JSON)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_unicode"
    r = api.post(c.Path.INFER, content=b'{"text": "great \\ud800"}', headers=JSON)
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_unicode"
    assert error_of(r)["field"] == "text"


def test_unknown_path_and_method_are_json(api: TestClient) -> None:
    r = api.get("/nope")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = api.get(c.Path.INFER)
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


# --- feedback -----------------------------------------------------------------------------------
def _metric_value(api: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(api.get(c.Path.METRICS).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_feedback_judges_outcomes_and_counts_them(api: TestClient) -> None:
    right = api.post(c.Path.INFER, json={"text": "great film", "request_id": "fb-ok"}).json()["label"]
    text = "great film, mail me at jo@example.com or call +44 20 7946 0958, @jo 2024"
    predicted = api.post(c.Path.INFER, json={"text": text, "request_id": "fb-wrong"}).json()["label"]
    wrong_label = "negative" if predicted == "positive" else "positive"
    before = _metric_value(
        api, c.METRIC_FEEDBACK_SERIES, label=wrong_label, predicted=predicted, outcome="incorrect"
    )
    ok = api.post(c.Path.FEEDBACK, json={"request_id": "fb-ok", "label": right})
    assert ok.status_code == 200 and ok.json()["outcome"] == "correct" and ok.json()["stored"] is False
    wrong = api.post(c.Path.FEEDBACK, json={"request_id": "fb-wrong", "label": wrong_label})
    assert wrong.json() == {
        "request_id": "fb-wrong",
        "outcome": "incorrect",
        "predicted": predicted,
        "label": wrong_label,
        "stored": True,
    }
    after = _metric_value(
        api, c.METRIC_FEEDBACK_SERIES, label=wrong_label, predicted=predicted, outcome="incorrect"
    )
    assert after == before + 1
    assert _metric_value(api, c.METRIC_FEEDBACK_SERIES, label=right, predicted=right, outcome="correct") >= 1
    stored = [s for s in api.app.state.ctx.store.samples() if s.request_id == "fb-wrong"]  # type: ignore[attr-defined]
    assert len(stored) == 1
    assert stored[0].text == "great film, mail me at [EMAIL] or call [PHONE], [HANDLE] ####"
    assert stored[0].predicted == predicted and stored[0].true_label == wrong_label
    # A request id is judged once.
    again = api.post(c.Path.FEEDBACK, json={"request_id": "fb-wrong", "label": wrong_label})
    assert again.status_code == 404


def test_feedback_errors(api: TestClient) -> None:
    r = api.post(c.Path.FEEDBACK, json={"request_id": "never-seen", "label": "positive"})
    assert r.status_code == 404 and error_of(r)["field"] == "request_id"
    api.post(c.Path.INFER, json={"text": "great", "request_id": "fb-label"})
    r = api.post(c.Path.FEEDBACK, json={"request_id": "fb-label", "label": "meh"})
    assert r.status_code == 422 and error_of(r)["field"] == "label"
    # The bad label did not use up the request id.
    assert api.post(c.Path.FEEDBACK, json={"request_id": "fb-label", "label": "positive"}).status_code == 200


def _wrong(api: TestClient, request_id: str, text: str = "great film") -> tuple[str, str]:
    """Infer `text` under `request_id`: (the predicted label, the other one)."""
    predicted = api.post(c.Path.INFER, json={"text": text, "request_id": request_id}).json()["label"]
    return predicted, "negative" if predicted == "positive" else "positive"


def test_feedback_the_store_cannot_take_is_503_counts_nothing_and_can_be_retried(api: TestClient) -> None:
    """The database is locked by another connection (a second replica, a reviewer's tool): the sample
    cannot be stored, so the outcome is not counted and the request id not used up."""
    predicted, wrong = _wrong(api, "fb-locked")
    series = {"label": wrong, "predicted": predicted, "outcome": "incorrect"}
    before = _metric_value(api, c.METRIC_FEEDBACK_SERIES, **series)
    store = api.app.state.ctx.store  # type: ignore[attr-defined]
    other = sqlite3.connect(str(store.path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        r = api.post(c.Path.FEEDBACK, json={"request_id": "fb-locked", "label": wrong})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert r.status_code == 503, r.text
    assert error_of(r)["code"] == "feedback_store_unavailable" and int(r.headers["retry-after"]) >= 1
    assert _metric_value(api, c.METRIC_FEEDBACK_SERIES, **series) == before
    assert not [s for s in store.samples() if s.request_id == "fb-locked"]
    # The client's retry, once the database is free, records it once.
    retry = api.post(c.Path.FEEDBACK, json={"request_id": "fb-locked", "label": wrong})
    assert retry.status_code == 200 and retry.json()["stored"] is True
    assert _metric_value(api, c.METRIC_FEEDBACK_SERIES, **series) == before + 1
    assert len([s for s in store.samples() if s.request_id == "fb-locked"]) == 1


def test_any_sqlite_error_while_storing_feedback_is_503(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.app.state.ctx.store  # type: ignore[attr-defined]

    def full(**_: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "add_misclassified", full)
    _, wrong = _wrong(api, "fb-full")
    r = api.post(c.Path.FEEDBACK, json={"request_id": "fb-full", "label": wrong})
    assert r.status_code == 503 and error_of(r)["code"] == "feedback_store_unavailable"
    monkeypatch.undo()
    assert api.post(c.Path.FEEDBACK, json={"request_id": "fb-full", "label": wrong}).status_code == 200


def test_feedback_on_a_huge_text_keeps_only_its_beginning(api: TestClient) -> None:
    """One word over 100 characters is one token, so a text may be ~256 KiB: review keeps whole words
    up to REVIEW_MAX_CHARS, and says the text was cut."""
    text = "great film, mail jo@example.com " + ("a" * 120 + " ") * 40  # 42 tokens, 4 872 characters
    _, wrong = _wrong(api, "fb-huge", text)
    r = api.post(c.Path.FEEDBACK, json={"request_id": "fb-huge", "label": wrong})
    assert r.status_code == 200 and r.json()["stored"] is True
    (sample,) = [s for s in api.app.state.ctx.store.samples() if s.request_id == "fb-huge"]  # type: ignore[attr-defined]
    assert sample.truncated and sample.text.endswith(" " + TRUNCATED)
    assert sample.text.startswith("great film, mail [EMAIL] aaaa") and len(sample.text) < len(text)


async def test_a_stuck_feedback_store_starves_neither_inference_nor_itself(
    make_settings: Callable[..., ServerSettings],
) -> None:
    """Feedback writes run on the store's own thread, at most MAX_QUEUED waiting: while that thread is
    stuck, further feedback is refused at once (503), and a long text for /infer, tokenized on
    asyncio's default pool, is still answered. Before, each stuck write held a thread of that pool."""
    app = create_app(make_settings())
    release = threading.Event()
    async with serving(app) as client:
        store = app.state.ctx.store
        real = store.add_misclassified

        def stuck(**kwargs: Any) -> None:
            release.wait(timeout=120)  # a bound, not a timing: set as soon as the checks are done
            real(**kwargs)

        store.add_misclassified = stuck
        n = MAX_QUEUED + 24
        items = [{"text": "great film", "request_id": f"s{i}"} for i in range(n)]
        predicted = [
            x["label"]
            for x in (await client.post(c.Path.INFER_BATCH, json={"items": items})).json()["results"]
        ]
        feedbacks = [
            asyncio.create_task(
                client.post(
                    c.Path.FEEDBACK,
                    json={"request_id": f"s{i}", "label": "negative" if p == "positive" else "positive"},
                )
            )
            for i, p in enumerate(predicted)
        ]
        try:
            done, _ = await asyncio.wait(feedbacks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert done, "no feedback was refused while the store was stuck"
            long_text = await asyncio.wait_for(
                client.post(c.Path.INFER, json={"text": "x" * 2000}), timeout=60
            )
            assert long_text.status_code == 200
            refused = [t.result() for t in feedbacks if t.done()]
            assert refused and all(r.status_code == 503 for r in refused)
        finally:
            release.set()
        answers = await asyncio.gather(*feedbacks)
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == MAX_QUEUED and codes.count(503) == n - MAX_QUEUED


async def test_a_feedback_cancelled_mid_write_is_recorded_once_by_the_writes_outcome(
    make_settings: Callable[..., ServerSettings],
) -> None:
    """While a sample is being written, a second feedback for the id is 409; if the client then goes
    away, the write still commits, so the outcome counts and the id is used up: giving it back at the
    cancellation let a retry store the same sample twice."""
    app = create_app(make_settings())
    entered, release = threading.Event(), threading.Event()

    async def feedback_total(client: Any) -> float:
        text = (await client.get(c.Path.METRICS)).text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == c.METRIC_FEEDBACK_SERIES and s.labels.get("outcome") == "incorrect"
        )

    async with serving(app) as client:
        store = app.state.ctx.store
        real = store.add_misclassified

        def stuck(**kwargs: Any) -> None:
            entered.set()
            release.wait(timeout=120)  # a bound, not a timing: set as soon as the checks are done
            real(**kwargs)

        store.add_misclassified = stuck
        label = (await client.post(c.Path.INFER, json={"text": "great film", "request_id": "mid"})).json()[
            "label"
        ]
        wrong = {"request_id": "mid", "label": "negative" if label == "positive" else "positive"}
        before = await feedback_total(client)
        first = asyncio.create_task(client.post(c.Path.FEEDBACK, json=wrong))
        try:
            assert await asyncio.to_thread(entered.wait, 60)
            again = await client.post(c.Path.FEEDBACK, json=wrong)
            assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_in_progress"
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            release.set()
        recent = app.state.ctx.recent
        for _ in range(600):  # the write ends on the store's thread, then settles the id (bounded wait)
            if not recent.held("mid"):
                break
            await asyncio.sleep(0.05)
        retry = await client.post(c.Path.FEEDBACK, json=wrong)
        assert retry.status_code == 404  # recorded by the cancelled request's write
        assert len(store.samples()) == 1
        assert await feedback_total(client) == before + 1


# --- observability ------------------------------------------------------------------------------
def test_metrics_follow_the_contract(api: TestClient) -> None:
    def latency_count(endpoint: str, status_class: str) -> float:
        name = f"{c.METRIC_REQUEST_LATENCY}_count"
        return _metric_value(api, name, endpoint=endpoint, status_class=status_class)

    before = {k: latency_count("/infer", k) for k in ("2xx", "4xx")}
    label = api.post(c.Path.INFER, json={"text": "great", "request_id": "contract-1"}).json()["label"]
    api.post(c.Path.FEEDBACK, json={"request_id": "contract-1", "label": label})
    api.post(c.Path.INFER, content=b"x", headers={"content-type": "text/plain"})
    api.post(c.Path.INFER_BATCH, json={"items": [{"text": "awful"}, {"text": "good"}]})
    r = api.get(c.Path.METRICS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, labels in c.METRIC_LABELS.items():
        assert name in families, name
        samples = [s for s in families[name].samples if not s.name.endswith(("_created",))]
        assert samples, name
        for s in samples:
            expected = set(labels) | ({"le"} if s.name.endswith("_bucket") else set())
            assert set(s.labels) == expected, (name, s.labels)
            assert s.labels["model_version"] == "test-v1"
    requests = {(s.labels["endpoint"], s.labels["status_code"]) for s in families[c.METRIC_REQUESTS].samples}
    assert {("/infer", "200"), ("/infer", "415"), ("/infer/batch", "200")} <= requests
    buckets = {
        float(s.labels["le"])
        for s in families[c.METRIC_REQUEST_LATENCY].samples
        if s.name.endswith("_bucket")
    }
    assert set(c.LATENCY_BUCKETS) <= buckets
    # a fast refusal (415) must not pull the answered requests' latency down: classes are apart
    assert {k: latency_count("/infer", k) - v for k, v in before.items()} == {"2xx": 1, "4xx": 1}
    assert _metric_value(api, c.METRIC_READY) == 1
    assert _metric_value(api, c.METRIC_MODEL_INFO, quantized="false", calibrated="false") == 1
    assert _metric_value(api, c.METRIC_PREDICTIONS_SERIES, label="positive") >= 1


def test_each_forward_pass_reports_its_time_on_the_forward_thread(api: TestClient) -> None:
    count, total = f"{c.METRIC_FORWARD_LATENCY}_count", f"{c.METRIC_FORWARD_LATENCY}_sum"
    passes, seconds = _metric_value(api, count), _metric_value(api, total)
    r = api.post(c.Path.INFER, json={"text": "great"})
    assert r.status_code == 200
    # One lone request, one pass, which took part of the request's own latency.
    assert _metric_value(api, count) == passes + 1
    spent = _metric_value(api, total) - seconds
    assert 0 < spent * 1000.0 < r.json()["latency_ms"]


def test_spans_are_named_by_the_contract(api: TestClient, module_spans: Spans) -> None:
    module_spans.exporter.clear()
    assert api.post(c.Path.INFER, json={"text": "great"}).status_code == 200
    names = module_spans.names()
    for span in (c.Span.PREPROCESS, c.Span.INFERENCE_FORWARD, c.Span.CALIBRATION, c.Span.RESPONSE_SERIALIZE):
        assert names.count(span) == 1, names
    spans = module_spans.exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1  # one request, one trace


def test_server_spans_carry_the_status_and_only_a_5xx_is_an_error(
    api: TestClient, module_spans: Spans
) -> None:
    from opentelemetry.trace import StatusCode

    for body, status in (({"text": "great"}, 200), ({"txt": "great"}, 422)):
        module_spans.exporter.clear()
        assert api.post(c.Path.INFER, json=body).status_code == status
        (server,) = [
            s for s in module_spans.exporter.get_finished_spans() if s.name == f"POST {c.Path.INFER}"
        ]
        assert server.attributes is not None and server.attributes["http.response.status_code"] == status
        assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's error


def test_an_unhandled_error_is_one_json_500_logged_once(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not re-raised to the server (which would log it again and drop the keep-alive connection): the
    test client, which raises whatever the app raises, gets the JSON answer; the span marks the error."""
    from opentelemetry.trace import StatusCode

    spans = Spans()
    app = create_app(settings_for(tiny_model_dir, tmp_path), tracer_provider=spans.provider)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        r = client.get("/boom")
    assert r.status_code == 500 and error_of(r)["code"] == "internal_error"
    bugs = [rec for rec in caplog.records if "unhandled error" in rec.getMessage()]
    assert len(bugs) == 1 and bugs[0].exc_info is not None
    (server,) = [s for s in spans.exporter.get_finished_spans() if s.name == "GET other"]
    assert server.status.status_code is StatusCode.ERROR


def test_one_json_log_line_per_inference_without_the_text(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "great film my secret diary"
    with caplog.at_level(logging.INFO, logger=INFERENCE_LOGGER):
        r = api.post(c.Path.INFER, json={"text": secret, "request_id": "log-1"})
    assert r.status_code == 200
    records = [rec for rec in caplog.records if rec.name == INFERENCE_LOGGER]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert "\n" not in line and "secret" not in line and "diary" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "log-1" and entry["model_version"] == "test-v1"
    assert entry["label"] == r.json()["label"] and entry["confidence"] == round(r.json()["confidence"], 6)
    assert entry["latency_ms"] > 0 and entry["event"] == "inference"


def test_health_ready_and_docs(api: TestClient) -> None:
    assert api.get(c.Path.HEALTHZ).json() == {"status": "ok"}
    ready = api.get(c.Path.READYZ).json()
    assert ready["status"] == "ready" and ready["labels"] == ["negative", "positive"]
    assert api.get(c.Path.DOCS).status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {c.Path.INFER, c.Path.INFER_BATCH, c.Path.EXPLAIN, c.Path.FEEDBACK} <= set(paths)
    for status in ("429", "503"):  # both can carry Retry-After, and say so
        assert "Retry-After" in paths[c.Path.INFER]["post"]["responses"][status]["headers"]


def test_every_guarded_post_documents_its_408(api: TestClient) -> None:
    """The guard answers 408 request_timeout on every guarded POST whose body stops arriving: the
    OpenAPI document says so, beside the other errors the guard answers."""
    paths = api.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path in (c.Path.INFER, c.Path.INFER_BATCH, c.Path.EXPLAIN, c.Path.FEEDBACK):
        responses = paths[path]["post"]["responses"]
        assert {"408", "413", "415", "429"} <= set(responses), (path, sorted(responses))
        assert "request_timeout" in responses["408"]["description"]


def test_a_bug_is_a_logged_json_500(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = api.app.state.ctx.state.engine  # type: ignore[attr-defined]

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(engine, "answer", broken)
    with caplog.at_level(logging.ERROR):
        r = api.post(c.Path.INFER, json={"text": "great"})
    assert r.status_code == 500 and error_of(r)["code"] == "internal_error"
    assert "simulated bug" not in r.text  # details go to the log, not to the client
    assert any(rec.exc_info and "simulated bug" in str(rec.exc_info[1]) for rec in caplog.records)


async def test_log_lines_follow_the_response_and_survive_a_failed_send() -> None:
    from inference_server.api.responses import JSONBytesThen

    events: list[str] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        events.append(message["type"])

    def log() -> None:
        events.append("logged")

    await JSONBytesThen({"ok": 1}, after_send=log)({"type": "http"}, receive, send)
    assert events == ["http.response.start", "http.response.body", "logged"]

    async def gone(message: MutableMapping[str, Any]) -> None:
        raise OSError("client went away")

    events.clear()
    with pytest.raises(OSError):
        await JSONBytesThen({"ok": 1}, after_send=log)({"type": "http"}, receive, gone)
    assert events == ["logged"]


# --- any number of classes ----------------------------------------------------------------------
def test_a_three_class_model_is_served_with_its_own_labels(tmp_path: Path) -> None:
    """Labels come from the model's config: nothing in the server assumes negative/positive."""
    from inference_server.tiny_model import build_tiny_model

    labels = ("negative", "neutral", "positive")
    model_dir = build_tiny_model(tmp_path / "three", labels=labels, train_steps=30)
    app = create_app(settings_for(model_dir, tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        one = client.post(c.Path.INFER, json={"text": "a great film", "request_id": "three-1"}).json()
        assert set(one["scores"]) == set(labels) and one["label"] in labels
        assert sum(one["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        batch = client.post(c.Path.INFER_BATCH, json={"items": [{"text": "awful"}, {"text": "fine"}]}).json()
        assert all(set(r["scores"]) == set(labels) for r in batch["results"])
        outcome = "correct" if one["label"] == "neutral" else "incorrect"
        r = client.post(c.Path.FEEDBACK, json={"request_id": "three-1", "label": "neutral"})
        assert r.status_code == 200 and r.json()["outcome"] == outcome
        # The predicted label is on the series: which class the miss went to (its false positive).
        labels = {"label": "neutral", "predicted": one["label"], "outcome": outcome}
        assert _metric_value(client, c.METRIC_FEEDBACK_SERIES, **labels) == 1
        explained = client.post(c.Path.EXPLAIN, json={"text": "a great film", "target_label": "neutral"})
        assert explained.status_code == 200 and explained.json()["label"] == "neutral"


def _predictions_and_tokens(api: TestClient) -> tuple[float, float]:
    predictions = sum(
        _metric_value(api, c.METRIC_PREDICTIONS_SERIES, label=label) for label in ("negative", "positive")
    )
    return predictions, _metric_value(api, c.METRIC_INPUT_TOKENS + "_count", endpoint=c.Path.INFER_BATCH)


def test_a_request_that_fails_counts_nothing_and_leaves_no_feedback_target(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers are recorded only once all of a request's answers exist: a batch whose second item fails
    (non-finite logits) must not count the first one's prediction or tokens, nor let /feedback judge
    (and store the text of) an answer the client never received."""
    engine = api.app.state.ctx.state.engine  # type: ignore[attr-defined]
    real = engine.answer

    def answer(prepared: Any, logits: Any) -> Any:
        if prepared.request_id == "poison":
            raise FloatingPointError("model produced non-finite logits")
        return real(prepared, logits)

    monkeypatch.setattr(engine, "answer", answer)
    before = _predictions_and_tokens(api)
    items = [{"text": "great", "request_id": "sent-never"}, {"text": "awful", "request_id": "poison"}]
    assert api.post(c.Path.INFER_BATCH, json={"items": items}).status_code == 500
    # A batch refused at its third item is not counted either.
    blank = [{"text": "a"}, {"text": "b"}, {"text": " "}]
    assert api.post(c.Path.INFER_BATCH, json={"items": blank}).status_code == 422
    assert _predictions_and_tokens(api) == before
    r = api.post(c.Path.FEEDBACK, json={"request_id": "sent-never", "label": "positive"})
    assert r.status_code == 404
    # And a batch that is answered counts each of its texts once.
    assert api.post(c.Path.INFER_BATCH, json={"items": blank[:2]}).status_code == 200
    assert _predictions_and_tokens(api) == (before[0] + 2, before[1] + 2)
