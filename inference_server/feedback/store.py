"""Misclassified samples kept for review: anonymised text in embedded SQLite, purged after 30 days.

Only what POST /feedback judged incorrect is stored, and only after ``anonymise``. Timestamps are
given by the caller (an injected clock), so retention is testable without waiting 30 days.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from inference_server.feedback.anonymise import anonymise

_SCHEMA = """
CREATE TABLE IF NOT EXISTS misclassified (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id    TEXT NOT NULL,
    created_at    TEXT NOT NULL,   -- ISO 8601 UTC; lexical order is time order
    model_version TEXT NOT NULL,
    predicted     TEXT NOT NULL,
    true_label    TEXT NOT NULL,
    confidence    REAL NOT NULL,
    text          TEXT NOT NULL    -- anonymised
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


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FeedbackStoreError(Exception):
    """The database cannot be opened or created where it was asked for."""


class FeedbackStore:
    """Thread-safe (one connection, one lock): the server calls it from worker threads."""

    def __init__(self, path: Path | str, *, retention: timedelta = timedelta(days=30)) -> None:
        self.path = Path(path)
        self.retention = retention
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise FeedbackStoreError(f"cannot open the feedback database {path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._conn.close()
            raise FeedbackStoreError(f"cannot open the feedback database {path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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
        row = (request_id, _iso(now), model_version, predicted, true_label, confidence, anonymise(text))
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
