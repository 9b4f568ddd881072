"""Input normalisation and limits (pure, property-based where the rule is a property), and the guard's
body reader."""

from __future__ import annotations

import unicodedata
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from inference_server import contract as c
from inference_server.api import middleware
from inference_server.api.middleware import RequestMetrics
from inference_server.serving.limits import PathPolicy, RequestGuard
from inference_server.serving.ratelimit import RateLimiter
from inference_server.serving.validation import (
    InputProblem,
    check_batch_items,
    check_token_count,
    normalise_text,
    precheck_length,
)

CONTROLS = (
    {chr(i) for i in range(0x20) if chr(i) not in "\t\n\r"}
    | {chr(0x7F)}
    | {chr(i) for i in range(0x80, 0xA0)}
)
# Whitespace, control and format characters: a text of nothing else has nothing for the model to read.
INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


@given(st.text())
def test_normalise_either_cleans_or_rejects_with_422(text: str) -> None:
    try:
        out = normalise_text(text)
    except InputProblem as problem:
        assert problem.status == 422 and problem.code in {"empty_text", "invalid_unicode"}
        return
    assert out.strip()
    assert any(unicodedata.category(ch) not in INVISIBLE for ch in out)
    assert unicodedata.is_normalized("NFC", out)
    assert not (set(out) & CONTROLS)
    out.encode("utf-8")  # valid Unicode


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_normalise_is_idempotent(text: str) -> None:
    try:
        once = normalise_text(text)
    except InputProblem:
        return
    assert normalise_text(once) == once


def test_specific_cases() -> None:
    assert normalise_text("a\x00b\tc\nd") == "a b\tc\nd"
    assert normalise_text("e\u0301") == "\u00e9"
    with pytest.raises(InputProblem) as info:
        normalise_text("ok \ud800")
    assert info.value.code == "invalid_unicode" and info.value.field == "text"
    with pytest.raises(InputProblem) as info:
        normalise_text("\x01\x02 ", field="items[2].text")
    assert info.value.code == "empty_text" and info.value.field == "items[2].text"


@pytest.mark.parametrize(
    "text",
    [
        "\u200b\u200b",  # zero-width spaces
        "\ufeff",  # a BOM left by an upstream decoder
        "\u202e\u2066",  # bidi controls
        "\u00ad\u00ad",  # soft hyphens
        "\u200d \u2060\u3000",  # joiner, word joiner, ideographic space
        "\u2028\u2029\x85",  # line/paragraph separators, NEL
    ],
)
def test_a_text_of_only_invisible_characters_is_empty(text: str) -> None:
    """The tokenizer drops format characters (Cf) as it drops whitespace: before, such a text was
    classified from [CLS][SEP] alone (200, counted in the prediction series, kept for /feedback)."""
    with pytest.raises(InputProblem) as info:
        normalise_text(text, field="items[0].text")
    assert (info.value.status, info.value.code, info.value.field) == (422, "empty_text", "items[0].text")


def test_a_visible_character_among_format_characters_keeps_the_text() -> None:
    # Emoji with joiners, a word with a soft hyphen: the format characters are kept as they are.
    assert normalise_text("\U0001f469\u200d\U0001f4bb") == "\U0001f469\u200d\U0001f4bb"
    assert normalise_text("\u200bgreat\u00adfilm") == "\u200bgreat\u00adfilm"


def test_limits() -> None:
    check_token_count(10, 10)
    with pytest.raises(InputProblem) as info:
        check_token_count(11, 10)
    assert (info.value.status, info.value.code) == (413, "too_many_tokens")
    check_batch_items(3, 3)
    with pytest.raises(InputProblem) as info:
        check_batch_items(4, 3)
    assert (info.value.status, info.value.code) == (413, "too_many_items")
    with pytest.raises(InputProblem) as info:
        check_batch_items(0, 3)
    assert (info.value.status, info.value.code) == (422, "empty_batch")


def test_precheck_rejects_only_what_cannot_fit() -> None:
    precheck_length("word " * 20, 10)  # within the margin: the exact token count decides
    precheck_length("x" * 10_000, 10)  # one long word: the tokenizer decides
    with pytest.raises(InputProblem) as info:
        precheck_length("word " * 21, 10)
    assert (info.value.status, info.value.code) == (413, "too_many_tokens")


@pytest.mark.parametrize("n_words", [20, 21])
@pytest.mark.parametrize("sep", [" ", "\n", " \t "])
def test_precheck_length_shortcut_keeps_the_word_rule(n_words: int, sep: str) -> None:
    # The densest texts (one-character words) straddle the 4·MAX_TOKENS-character shortcut: the rule
    # is still "more than 2·MAX_TOKENS words", whatever the separators.
    text = sep.join("x" * n_words)
    if n_words > 20:
        with pytest.raises(InputProblem):
            precheck_length(text, 10)
    else:
        precheck_length(text, 10)


async def test_latency_ends_when_the_response_is_sent_not_when_after_send_work_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work after the last body chunk (the log line) keeps no client waiting: not latency."""
    now = [100.0]
    monkeypatch.setattr(middleware, "time", SimpleNamespace(perf_counter=lambda: now[0]))  # its clock only

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": True})
        now[0] += 0.05  # between chunks: the client is still waiting
        await send({"type": "http.response.body", "body": b""})
        now[0] += 0.2  # after the response: nobody waits

    observed: list[float] = []
    app = RequestMetrics(
        endpoint, observe=lambda _p, _s, seconds: observed.append(seconds), in_flight=lambda _n: None
    )

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    await app({"type": "http", "method": "GET", "path": "/healthz", "headers": []}, receive, send)
    assert observed == [pytest.approx(0.05)]


async def test_a_client_that_leaves_mid_body_reaches_no_endpoint_and_is_no_server_error() -> None:
    """The guard's body reader sees the disconnect: the partial body is dropped (it could even parse as
    JSON), and the request is recorded as nginx's 499, not as the 500 a response never sent defaults to."""
    reached: list[bytes] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append((await receive())["body"])

    observed: list[tuple[str, int]] = []
    policy = PathPolicy(limiter=RateLimiter(0), max_body_bytes=1024)
    app = RequestMetrics(
        RequestGuard(endpoint, policies={c.Path.INFER: policy}),
        observe=lambda path, status, _s: observed.append((path, status)),
        in_flight=lambda _n: None,
    )
    messages = iter(
        [
            {"type": "http.request", "body": b'{"text": "great"}', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> Message:
        return next(messages)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": c.Path.INFER,
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    assert reached == []
    assert observed == [(c.Path.INFER, 499)]
