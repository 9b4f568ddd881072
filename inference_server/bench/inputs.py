"""The benchmark's inputs: short (~25 tokens) real test sentences, and long (~120 tokens) texts made by
joining consecutive test sentences (pure; token counts come from the model's tokenizer in the shell)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SPECIAL_TOKENS = 2  # [CLS] … [SEP]: counted once per text, so joining k sentences saves 2·(k-1)


@dataclass(frozen=True)
class InputSet:
    name: str  # "short" | "long"
    texts: tuple[str, ...]
    labels: tuple[str | None, ...]  # the test split's label for single sentences, None for joined texts
    tokens: tuple[int, ...]  # with special tokens, as the model counts them

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens) / len(self.tokens) if self.tokens else 0.0


def select_short(tokens: Sequence[int], *, target: int = 25, limit: int = 512) -> list[int]:
    """Indices of the ``limit`` texts whose token count is closest to ``target`` (ties: earlier first),
    returned in dataset order so that labels stay mixed as the split has them."""
    closest = sorted(range(len(tokens)), key=lambda i: (abs(tokens[i] - target), i))[:limit]
    return sorted(closest)


def join_long(tokens: Sequence[int], *, low: int = 110, high: int = 130, limit: int = 256) -> list[list[int]]:
    """Groups of consecutive text indices whose joined token count lies within [low, high].

    Greedy: keep appending sentences; emit the group once it reaches ``low``; restart from the
    current sentence when it would overshoot ``high``. Each sentence is used at most once.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    total = SPECIAL_TOKENS
    for i, n in enumerate(tokens):
        content = max(0, n - SPECIAL_TOKENS)
        if total + content > high:
            current, total = [], SPECIAL_TOKENS
            if SPECIAL_TOKENS + content > high:
                continue
        current.append(i)
        total += content
        if total >= low:
            groups.append(current)
            if len(groups) >= limit:
                break
            current, total = [], SPECIAL_TOKENS
    return groups


def joined_text(texts: Sequence[str], group: Sequence[int]) -> str:
    return " ".join(texts[i] for i in group)
