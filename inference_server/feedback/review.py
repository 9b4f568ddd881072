"""How much of a text is kept for review: at most REVIEW_MAX_CHARS characters, cut between words.

A text may be as long as the request body allows (256 KiB of one "word" is a single token), but a person
reviewing a misclassified sample needs its beginning, not all of it. The cap bounds the memory of recent
predictions per entry (a few huge texts cannot flush thousands of ordinary ones), the work ``anonymise``
does, and the size of each stored sample. A cut text ends in ``TRUNCATED``, so the reader knows.
"""

from __future__ import annotations

import re

REVIEW_MAX_CHARS = 4000
TRUNCATED = "[TRUNCATED]"  # no digits, dots or "@": anonymise leaves it as it is

_UP_TO_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


def clip_for_review(text: str, limit: int = REVIEW_MAX_CHARS) -> str:
    """``text`` if it fits in ``limit`` characters; else its leading whole words and TRUNCATED, in at
    most ``limit`` characters (so clipping twice changes nothing).

    Only whole words are kept: a word cut in half could be the part of an address or a name that the
    anonymiser no longer recognises ("jane.doe@exa" is still an email, "janedoe.x" is not a domain).
    """
    if len(text) <= limit:
        return text
    room = limit - len(TRUNCATED) - 1  # the kept words, a space, the marker
    head = _UP_TO_LAST_SPACE.match(text, 0, room + 1)  # whitespace at `room` ends a whole word
    kept = head.group(0).rstrip() if head else ""
    return f"{kept} {TRUNCATED}" if kept else TRUNCATED
