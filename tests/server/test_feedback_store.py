"""Anonymisation, the 30-day purge (injected clock) and the bounded memory of recent predictions."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_server.feedback.anonymise import anonymise
from inference_server.feedback.recent import RecentPredictions
from inference_server.feedback.store import FeedbackStore


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
    ],
)
def test_anonymise_masks_personal_data(text: str, expected: str) -> None:
    assert anonymise(text) == expected


@given(st.text())
def test_anonymised_text_has_no_digits_handles_or_addresses(text: str) -> None:
    out = anonymise(text)
    assert not re.search(r"\d", out)
    assert not re.search(r"(?<![\w@])@\w", out)
    assert "http://" not in out.lower() and "https://" not in out.lower()
    assert anonymise(out) == out  # idempotent: masks are not masked again


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
