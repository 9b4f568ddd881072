"""Anonymisation, the 30-day purge (injected clock) and the bounded memory of recent predictions."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from inference_server.feedback.anonymise import anonymise, strip_format_characters
from inference_server.feedback.recent import RecentPredictions
from inference_server.feedback.review import REVIEW_MAX_CHARS, TRUNCATED, clip_for_review
from inference_server.feedback.store import FeedbackStore, FeedbackStoreUnavailable
from inference_server.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe+x@mail.example.co.uk now", "mail [EMAIL] now"),
        ("see https://example.com/a?b=1 and www.test.org/x", "see [URL] and [URL]"),
        ("call +44 20 7946 0958 or (555) 123-4567", "call [PHONE] or [PHONE]"),
        ("thanks @jane_doe!", "thanks [HANDLE]!"),
        ("room 12, 3 nights", "room ##, # nights"),
        ("no personal data here", "no personal data here"),
        ("see evil.com/track?u=jane or bit.ly/AbCdEf", "see [URL] or [URL]"),
        ("bought it on Amazon.com, meh", "bought it on [URL], meh"),
        ("write to root@localhost", "write to [EMAIL]"),
        ("ｔｈａｎｋｓ ＠jane, call ０１２３", "thanks [HANDLE], call ####"),  # full-width look-alikes
        ("the end.The film was fine", "the end.The film was fine"),  # a missing space is not a domain
        # Invisible format characters (Unicode Cf) do not split what they sit in.
        ("mail jane.smith\u200b@gmail.com", "mail [EMAIL]"),
        ("mail jane.smith\u2060@gmail.com", "mail [EMAIL]"),
        ("mail jane\xad.smith@gmail.com", "mail [EMAIL]"),
        ("hi @jane\u200bdoe", "hi [HANDLE]"),
        # Any dotted name ending in an alphabetic top-level label, with its query or fragment.
        ("go to janedoe.xyz", "go to [URL]"),
        ("example.academy, mysite.online, foo.ru, bücher.de", "[URL], [URL], [URL], [URL]"),
        ("see janedoe.xyz?ref=1 or janedoe.xyz#me", "see [URL] or [URL]"),
        ("AMAZON.COM and Amazon.Com and Bit.Ly/AbC", "[URL] and [URL] and [URL]"),
        ("e.g. this, i.e. that, U.S.A. and Ph.D", "e.g. this, i.e. that, U.S.A. and Ph.D"),
        # Handles: after several "@", and dotted as a whole.
        ("@@janedoe and x@@@jane", "[HANDLE] and [EMAIL]"),
        ("thanks @jane.doe.", "thanks [HANDLE]."),
        # The whole local part of an address.
        ("mail jean-luc.o'brien@corp.com", "mail [EMAIL]"),
        ("mail firstname%lastname@corp.com", "mail [EMAIL]"),
    ],
)
def test_anonymise_masks_personal_data(text: str, expected: str) -> None:
    assert anonymise(text) == expected


@given(st.text())
def test_anonymised_text_has_no_digits_handles_or_addresses(text: str) -> None:
    out = anonymise(text)
    assert not re.search(r"\d", out)
    assert not re.search(r"@\w", out)  # no handle, however many "@" precede it
    assert "http://" not in out.lower() and "https://" not in out.lower()
    assert not any(unicodedata.category(ch) == "Cf" for ch in out)
    assert anonymise(out) == out  # idempotent: masks are not masked again


_INVISIBLE = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\xad", "\u200e", "\u2062"])
_LABEL = st.from_regex(r"[a-z]{2,8}", fullmatch=True)
_PERSONAL = [  # how a name (the {n}) is given away; the rest is filled from _LABEL
    "{n}@{a}.{b}",
    "{a}.{n}+{b}@{a}.{b}",
    "{a}'{n}@{b}.com",
    "{a}%{n}@{b}.{a}",
    "@{n}",
    "@@{n}",
    "@{n}.{a}",
    "{n}.{b}",
    "{a}.{n}.{b}?ref={a}",
    "{n}.{b}/{a}",
    "www.{n}.{b}",
    "https://{a}.{b}/{n}",
]


@st.composite
def _hidden(draw: Any, pattern: str, name: str) -> str:
    """`pattern` filled in, with invisible characters anywhere inside it."""
    plain = pattern.format(n=name, a=draw(_LABEL), b=draw(_LABEL))
    gaps = draw(st.lists(st.one_of(st.just(""), _INVISIBLE), min_size=len(plain), max_size=len(plain)))
    return "".join(ch + gap for ch, gap in zip(plain, gaps, strict=True))


@given(
    st.data(),
    st.sampled_from(_PERSONAL),
    _LABEL.map(lambda s: "zq" + s),
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_names_in_addresses_handles_and_domains_are_masked_even_split_by_invisible_characters(
    data: st.DataObject, pattern: str, name: str, before: str, after: str
) -> None:
    around = unicodedata.normalize("NFKC", strip_format_characters(before + " " + after))
    assume(name not in around)
    out = anonymise(f"{before} {data.draw(_hidden(pattern, name))} {after}")
    assert name not in out


def test_anonymise_takes_linear_time_on_adversarial_runs() -> None:
    """A pattern retried from every position of a long run (the old email pattern on "aaa…") takes
    minutes on 200 000 characters, holding the GIL (so no thread could time it out): run in a child
    process, bounded far above what linear patterns need (well under a second each)."""
    shapes = ["a", "a-", "a.", "1", "1 ", "1-", "@", "a@", "@a.", "'", "a.b-", "(1", "1(", "www.", "é\u200b"]
    script = (
        "from inference_server.feedback.anonymise import anonymise\n"
        f"for shape in {shapes!r}:\n"
        "    anonymise(shape * (200_000 // len(shape)) + 'x')\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=300)


# --- what review keeps --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short", "short"),
        ("x" * 30, "x" * 30),
        ("great film " + "word " * 10, f"great film word {TRUNCATED}"),  # only whole words
        ("r" * 18 + " and more words", f"{'r' * 18} {TRUNCATED}"),  # a word that just fits
        ("a" * 50, TRUNCATED),  # a single huge word: nothing of it
        ("mail jane.doe@exa" + "mple.com" * 5, f"mail {TRUNCATED}"),  # no half address
    ],
)
def test_text_for_review_is_clipped_between_words_and_says_so(text: str, expected: str) -> None:
    clipped = clip_for_review(text, limit=30)
    assert clipped == expected and len(clipped) <= 30
    assert clip_for_review(clipped, limit=30) == clipped


def test_a_huge_text_is_stored_clipped_and_marked_truncated(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    huge = "great film, mail jo@example.com " + ("a" * 120 + " ") * 2000  # 242 000 characters
    short = "awful film"
    for request_id, text in (("huge", huge), ("short", short)):
        store.add_misclassified(
            request_id=request_id,
            text=text,
            predicted="positive",
            true_label="negative",
            confidence=0.9,
            model_version="v1",
            now=datetime(2026, 1, 1, tzinfo=UTC),
        )
    stored = {s.request_id: s for s in store.samples()}
    assert len(stored["huge"].text) <= REVIEW_MAX_CHARS and stored["huge"].truncated
    assert stored["huge"].text.startswith("great film, mail [EMAIL] aaaa")
    assert stored["huge"].text.endswith(" " + TRUNCATED)
    assert stored["short"].text == short and not stored["short"].truncated
    store.close()


def test_misclassified_samples_are_stored_anonymised_and_purged_after_30_days(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.add_misclassified(
        request_id="old",
        text="call me at 555-123-4567",
        predicted="positive",
        true_label="negative",
        confidence=0.9,
        model_version="v1",
        now=t0,
    )
    store.add_misclassified(
        request_id="new",
        text="mail a@b.io",
        predicted="negative",
        true_label="positive",
        confidence=0.7,
        model_version="v1",
        now=t0 + timedelta(days=20),
    )
    assert [s.text for s in store.samples()] == ["call me at [PHONE]", "mail [EMAIL]"]
    assert store.purge(t0 + timedelta(days=29, hours=23)) == 0
    assert store.purge(t0 + timedelta(days=30, seconds=1)) == 1
    assert [s.request_id for s in store.samples()] == ["new"]
    store.close()
    reopened = FeedbackStore(tmp_path / "fb.sqlite3")  # it persists
    assert [s.request_id for s in reopened.samples()] == ["new"]
    assert reopened.purge(t0 + timedelta(days=51)) == 1 and reopened.samples() == []
    reopened.close()


def _add(store: FeedbackStore, request_id: str = "r1") -> None:
    store.add_misclassified(
        request_id=request_id,
        text="awful",
        predicted="positive",
        true_label="negative",
        confidence=0.9,
        model_version="v1",
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def _write(store: FeedbackStore, request_id: str = "r1") -> None:
    await store.on_own_thread(partial(_add, store, request_id))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    s = FeedbackStore(tmp_path / "fb.sqlite3")
    yield s
    s.close()


async def test_a_locked_database_fails_a_write_quickly_on_the_stores_own_thread(store: FeedbackStore) -> None:
    """Another connection (a second replica, a reviewer's tool) holds the write lock: the write gives up
    after the store's short busy timeout, not SQLite's default 5 s, and says so with
    FeedbackStoreUnavailable; it never ran on asyncio's default pool, which /infer uses."""
    (busy_ms,) = store._conn.execute("PRAGMA busy_timeout").fetchone()
    assert 0 < busy_ms <= 1000
    threads: list[str] = []
    real = store.add_misclassified

    def add(**kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        real(**kwargs)

    store.add_misclassified = add  # type: ignore[method-assign]
    other = sqlite3.connect(str(store.path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(FeedbackStoreUnavailable, match="locked"):
        await _write(store, "r1")
    other.execute("ROLLBACK")
    other.close()
    await _write(store, "r1")  # the same write, once the lock is gone
    assert [s.request_id for s in store.samples()] == ["r1"]
    assert len(threads) == 2 and all(name.startswith("feedback-store") for name in threads)


async def test_writes_beyond_the_queue_fail_at_once(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3", max_queued=2)
    go = threading.Event()
    real = store.add_misclassified

    def add(**kwargs: Any) -> None:
        go.wait(timeout=60)  # a bound, not a timing: the test sets it long before
        real(**kwargs)

    store.add_misclassified = add  # type: ignore[method-assign]
    waiting = [asyncio.create_task(_write(store, f"r{i}")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(FeedbackStoreUnavailable, match="waiting"):
        await _write(store, "r2")
    go.set()
    await asyncio.gather(*waiting)
    await _write(store, "r3")  # the queue has room again
    assert sorted(s.request_id for s in store.samples()) == ["r0", "r1", "r3"]
    store.close()


def test_retention_and_recent_sizes_are_not_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEEDBACK_RETENTION_DAYS", "3650")
    monkeypatch.setenv("RECENT_REQUESTS_MAX", "5")
    monkeypatch.setenv("RECENT_REQUESTS_TTL_SECONDS", "1")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    settings = load_settings()
    assert settings.feedback_retention_days == 30
    assert (settings.recent_requests_max, settings.recent_requests_ttl_seconds) == (10_000, 24 * 3600)
    # Code (tests, the demo) may still set them, and shorten retention but not lengthen it.
    assert load_settings(feedback_retention_days=7, recent_requests_max=5).feedback_retention_days == 7
    with pytest.raises(ValueError, match="feedback_retention_days"):
        load_settings(feedback_retention_days=31)


def test_recent_predictions_are_bounded_by_count_chars_and_age() -> None:
    now = [0.0]
    recent = RecentPredictions(max_entries=3, max_chars=10, ttl_s=60, clock=lambda: now[0])
    for i in range(4):
        recent.remember(f"r{i}", "positive", 0.9, "v1", "ab")
    assert len(recent) == 3 and recent.pop("r0") is None  # oldest evicted by count
    recent.remember("big", "negative", 0.8, "v1", "x" * 9)
    assert len(recent) == 1 and recent.pop("r3") is None  # evicted by characters
    now[0] = 61
    assert recent.pop("big") is None  # expired
    recent.remember("r9", "negative", 0.8, "v1", "t")
    got = recent.pop("r9")
    assert got is not None and got.label == "negative"
    assert recent.pop("r9") is None  # judged once


def test_a_few_huge_texts_do_not_flush_the_recent_predictions() -> None:
    """Each entry keeps (and counts) at most REVIEW_MAX_CHARS: 19 texts of 262 000 characters used to
    evict 8 500 of 9 000 ordinary predictions from the 5 M character budget."""
    recent = RecentPredictions()
    for i in range(9000):
        recent.remember(f"r{i}", "positive", 0.9, "v1", "a fine ordinary review of a film")
    for i in range(19):
        recent.remember(f"big{i}", "negative", 0.8, "v1", "awful " + "a" * 262_000)
    assert len(recent) == 9019
    assert recent.pop("r0") is not None
    big = recent.pop("big0")
    assert big is not None and big.text == f"awful {TRUNCATED}"


def test_feedback_holds_a_prediction_until_its_outcome_is_recorded_or_given_back() -> None:
    recent = RecentPredictions()
    recent.remember("r1", "positive", 0.9, "v1", "great")
    first = recent.claim("r1")
    assert first is not None and first.label == "positive"
    assert recent.claim("r1") is None and recent.held("r1")  # one feedback at a time
    recent.release(first)  # e.g. the store was unavailable: the client may retry
    again = recent.claim("r1")
    assert again is first
    recent.settle(again)
    assert recent.claim("r1") is None and not recent.held("r1") and len(recent) == 0
    # A newer prediction under the same id, made while feedback on the old one was being stored,
    # is not forgotten when that feedback settles.
    recent.remember("r2", "positive", 0.9, "v1", "great")
    old = recent.claim("r2")
    assert old is not None
    recent.remember("r2", "negative", 0.9, "v1", "awful")
    recent.settle(old)
    newer = recent.pop("r2")
    assert newer is not None and newer.label == "negative"
