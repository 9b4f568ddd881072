"""Recent predictions by request id, so that POST /feedback can judge the outcome.

Bounded three ways: entries, total characters of remembered text, and age. The text is kept only in
memory and only so that a misclassified sample can be stored (anonymised) for review; it is never logged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    request_id: str
    label: str
    confidence: float
    model_version: str
    text: str
    at: float  # clock time of the prediction


class RecentPredictions:
    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_chars: int = 5_000_000,
        ttl_s: float = 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, Prediction] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, request_id: str, label: str, confidence: float, model_version: str, text: str) -> None:
        self._drop(request_id)
        item = Prediction(request_id, label, confidence, model_version, text, self._clock())
        self._items[request_id] = item
        self._chars += len(text)
        self._evict()

    def pop(self, request_id: str) -> Prediction | None:
        """The prediction for `request_id` if still remembered (and forget it: feedback counts once)."""
        self._expire()
        return self._drop(request_id)

    def _drop(self, request_id: str) -> Prediction | None:
        item = self._items.pop(request_id, None)
        if item is not None:
            self._chars -= len(item.text)
        return item

    def _expire(self) -> None:
        horizon = self._clock() - self.ttl_s
        while self._items:
            oldest = next(iter(self._items.values()))
            if oldest.at >= horizon:
                break
            self._drop(oldest.request_id)

    def _evict(self) -> None:
        self._expire()
        while self._items and (len(self._items) > self.max_entries or self._chars > self.max_chars):
            self._drop(next(iter(self._items)))
