"""Recent predictions by request id, so that POST /feedback can judge the outcome.

Bounded three ways: entries, total characters of remembered text, and age. The text is kept only in
memory and only so that a misclassified sample can be stored (anonymised) for review; it is never logged.
Each entry keeps at most REVIEW_MAX_CHARS of its text (feedback/review.py), all that review would
keep: so the character budget counts at most that per entry, and a few huge texts cannot flush
thousands of ordinary ones.

Feedback takes an entry in two steps, because storing a misclassified sample can fail: ``claim`` holds
it (a second feedback for the same id meanwhile sees it as held), then ``settle`` forgets it once the
outcome is recorded, or ``release`` gives it back so the client can retry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from inference_server.feedback.review import clip_for_review


@dataclass(frozen=True)
class Prediction:
    request_id: str
    label: str
    confidence: float
    model_version: str
    text: str  # at most REVIEW_MAX_CHARS (feedback/review.py)
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
        self._held: dict[str, Prediction] = {}  # claimed by a feedback whose outcome is not recorded yet
        self._chars = 0

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, request_id: str, label: str, confidence: float, model_version: str, text: str) -> None:
        self._drop(request_id)
        item = Prediction(request_id, label, confidence, model_version, clip_for_review(text), self._clock())
        self._items[request_id] = item
        self._chars += len(item.text)
        self._evict()

    def claim(self, request_id: str) -> Prediction | None:
        """The prediction for `request_id`, held for one feedback until `settle` or `release`; None if
        it is unknown (expired, evicted, never made, already judged) or held by another feedback."""
        self._expire()
        item = self._items.get(request_id)
        if item is None or request_id in self._held:
            return None
        self._held[request_id] = item
        return item

    def held(self, request_id: str) -> bool:
        return request_id in self._held

    def settle(self, item: Prediction) -> None:
        """The feedback on `item` is recorded: forget it (feedback counts once)."""
        self.release(item)
        if self._items.get(item.request_id) is item:  # not replaced by a newer prediction meanwhile
            self._drop(item.request_id)

    def release(self, item: Prediction) -> None:
        """The feedback on `item` was not recorded: it may be given again."""
        if self._held.get(item.request_id) is item:
            del self._held[item.request_id]

    def pop(self, request_id: str) -> Prediction | None:
        """The prediction for `request_id` if still remembered and not held (and forget it)."""
        item = self.claim(request_id)
        if item is not None:
            self.settle(item)
        return item

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
