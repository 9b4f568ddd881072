"""Misclassified samples kept for review: anonymised text in embedded SQLite, purged after 30 days.

Only what POST /feedback judged incorrect is stored, only after ``anonymise``, and at most
REVIEW_MAX_CHARS of it (a longer text ends in TRUNCATED: feedback/review.py). Timestamps are given by
the caller (an injected clock), so retention is testable without waiting 30 days.

The server reaches the database only through ``on_own_thread``: on the store's own single
thread, never asyncio's default pool, which tokenizes long texts for /infer; a locked or slow database
must cost feedback, not predictions. A write waits at most BUSY_TIMEOUT_S for a lock held by another
connection, and at most MAX_QUEUED writes wait for the thread; beyond either it fails at once with
``FeedbackStoreUnavailable`` (the API answers 503 and the client retries).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from inference_server.feedback.anonymise import anonymise
from inference_server.feedback.review import TRUNCATED, clip_for_review

T = TypeVar("T")
BUSY_TIMEOUT_S = 0.25  # SQLite's own default is 5 s, per write, one write after another
MAX_QUEUED = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS misclassified (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id    TEXT NOT NULL,
    created_at    TEXT NOT NULL,   -- ISO 8601 UTC; lexical order is time order
    model_version TEXT NOT NULL,
    predicted     TEXT NOT NULL,
    true_label    TEXT NOT NULL,
    confidence    REAL NOT NULL,
    text          TEXT NOT NULL    -- anonymised; at most REVIEW_MAX_CHARS, ending in [TRUNCATED] if cut
);
CREATE INDEX IF NOT EXISTS misclassified_created_at ON misclassified (created_at);
"""


@dataclass(frozen=True)
class StoredSample:
    request_id: str
    created_at: datetime
    model_version: str
    predicted: str
    true_label: str
    confidence: float
    text: str

    @property
    def truncated(self) -> bool:
        """Only the beginning of the text was kept (feedback/review.py)."""
        return self.text.endswith(TRUNCATED)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FeedbackStoreError(Exception):
    """The database cannot be opened or created where it was asked for."""


class FeedbackStoreUnavailable(Exception):
    """A write or purge did not happen: the database is locked, full or failing, or too many writes
    are already waiting. Nothing was stored; the same call may succeed later."""


class FeedbackStore:
    """Thread-safe (one connection, one lock). The synchronous methods are for tests and tools; the
    server uses the async ones, which run on the store's own thread (module doc)."""

    def __init__(
        self,
        path: Path | str,
        *,
        retention: timedelta = timedelta(days=30),
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self._slots = threading.BoundedSemaphore(max_queued)  # one per call queued or running
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # Opening may wait SQLite's usual 5 s for a lock (start-up is not in a hurry, and failing
            # it would stop the server); the writes after it wait busy_timeout_s at most.
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise FeedbackStoreError(f"cannot open the feedback database {path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
        except sqlite3.Error as exc:
            self._conn.close()
            raise FeedbackStoreError(f"cannot open the feedback database {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-store")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._conn.close()

    async def on_own_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the store's thread; FeedbackStoreUnavailable if the queue is full, the store
        is closed, or SQLite fails (nothing was written then)."""
        if not self._slots.acquire(blocking=False):
            raise FeedbackStoreUnavailable("too many feedback writes already waiting")
        try:
            job = self._executor.submit(fn)
        except RuntimeError as exc:  # shut down: the server is stopping
            self._slots.release()
            raise FeedbackStoreUnavailable("the feedback store is closed") from exc
        # Released when the job ends, on whichever thread: a caller that stops waiting (a cancelled
        # request) does not free a slot while its write still runs.
        job.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.wrap_future(job)
        except sqlite3.Error as exc:
            raise FeedbackStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def add_misclassified(
        self,
        *,
        request_id: str,
        text: str,
        predicted: str,
        true_label: str,
        confidence: float,
        model_version: str,
        now: datetime,
    ) -> None:
        # Clipped before anonymise (which then reads at most a few thousand characters) and after it
        # (folding and masks change the length), so the stored text is bounded either way.
        kept = clip_for_review(anonymise(clip_for_review(text)))
        row = (request_id, _iso(now), model_version, predicted, true_label, confidence, kept)
        with self._lock:
            self._conn.execute(
                "INSERT INTO misclassified (request_id, created_at, model_version, predicted, true_label,"
                " confidence, text) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def purge(self, now: datetime) -> int:
        """Delete samples older than the retention period; returns how many were deleted."""
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM misclassified WHERE created_at < ?", (_iso(now - self.retention),)
            )
            return cur.rowcount

    def samples(self) -> list[StoredSample]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT request_id, created_at, model_version, predicted, true_label, confidence, text"
                " FROM misclassified ORDER BY id"
            ).fetchall()
        return [
            StoredSample(r[0], datetime.strptime(r[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), *r[2:])
            for r in rows
        ]
