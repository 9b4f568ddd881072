"""Stateful fuzz of /feedback (the schema fuzz in test_fuzz.py never gets past `unknown_label`): infer a
generated text, then send feedback with the other label, so that the request-id lookup, the outcome
count, the anonymiser and the SQLite store all see generated input. Texts mix arbitrary Unicode with
the personal data the anonymiser masks (emails, URLs, phone numbers, handles, digits) and run up to and
past MAX_TOKENS. No answer is a 5xx, and every stored row is anonymised."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from inference_server import contract as c
from inference_server.app import create_app
from inference_server.feedback.anonymise import anonymise
from inference_server.serving.lifecycle import Phase
from inference_server.tiny_model import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

from .conftest import settings_for, wait_phase

EXAMPLES = 120  # bounded: a few seconds on the tiny model
WORDS = st.sampled_from(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS)
DIGITS = st.from_regex(r"\+?[0-9][0-9 ().-]{0,14}[0-9]", fullmatch=True)
HANDLES = st.from_regex(r"@[a-z][a-z0-9._-]{0,12}[a-z0-9]", fullmatch=True)
PII = st.one_of(st.emails(), urls(), DIGITS, HANDLES)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)


@st.composite
def texts(draw: st.DrawFn, max_tokens: int) -> tuple[str, list[str]]:
    """A text and the personal data put into it (which must not be stored as it was)."""
    pii = draw(st.lists(PII, max_size=4))
    kind = draw(st.sampled_from(("words", "unicode", "long")))
    if kind == "long":  # one token per vocabulary word: around MAX_TOKENS, on both sides of it
        words = draw(st.lists(WORDS, min_size=max_tokens - 12, max_size=max_tokens + 2))
    elif kind == "words":
        words = draw(st.lists(WORDS, min_size=1, max_size=20))
    else:
        words = [draw(ANY_TEXT)]
    parts = list(words)
    for item in pii:
        parts.insert(draw(st.integers(0, len(parts))), item)
    return " ".join(parts), pii


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(settings_for(tiny_model_dir, tmp_path_factory.mktemp("feedback-fuzz")))
    with TestClient(app, raise_server_exceptions=False) as cl:
        assert wait_phase(app) is Phase.READY, app.state.ctx.state.error
        yield cl


def test_feedback_after_infer_never_5xx_and_stores_only_anonymised_text(client: TestClient) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    max_tokens = ctx.state.engine.model.max_tokens
    seen: Counter[str] = Counter()

    @given(case=texts(max_tokens))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    def probe(case: tuple[str, list[str]]) -> None:
        text, pii = case
        seen["cases"] += 1
        rid = f"fz-{seen['cases']}"
        r = client.post(c.Path.INFER, json={"text": text, "request_id": rid})
        assert r.status_code < 500, (text, r.text)
        if r.status_code != 200:
            assert r.headers["content-type"].startswith("application/json"), r.text
            seen[f"infer {r.status_code}"] += 1
            return
        wrong = "negative" if r.json()["label"] == "positive" else "positive"
        fb = client.post(c.Path.FEEDBACK, json={"request_id": rid, "label": wrong})
        assert fb.status_code == 200 and fb.json()["stored"] is True, (text, fb.text)
        seen["stored"] += 1
        if pii:
            seen["stored with personal data"] += 1
        (row,) = [s for s in ctx.store.samples() if s.request_id == rid]
        assert row.predicted == r.json()["label"] and row.true_label == wrong
        assert not re.search(r"\d", row.text), (text, row.text)
        assert not [item for item in pii if len(item) > 3 and item in row.text], (text, row.text)
        assert anonymise(row.text) == row.text, (text, row.text)  # nothing left to mask
        # the same feedback twice: the id is used up (404), never a 5xx or a second row
        again = client.post(c.Path.FEEDBACK, json={"request_id": rid, "label": wrong})
        assert again.status_code == 404, again.text

    probe()
    # The probe reached what it is for: most cases were stored, many with personal data in them.
    assert seen["stored"] >= EXAMPLES // 2 and seen["stored with personal data"] >= EXAMPLES // 4, seen
