"""Text input policy (pure functions): what the server accepts, normalises, and rejects.

Policy, in order (documented in the README, "Inference server"):
1. The text must be valid Unicode: a lone surrogate (JSON ``"\\ud800"``) → 422 ``invalid_unicode``.
   Bytes that are not UTF-8 never get this far: the JSON body itself is rejected with 422.
2. It is normalised to NFC, so composed and decomposed spellings of the same text get one answer.
3. Control characters are replaced by a space: C0 (U+0000–U+001F) except tab, line feed and carriage
   return, DEL (U+007F) and C1 (U+0080–U+009F). They carry no sentiment and some tokenizers choke on them.
4. A text that is empty, or has no visible character after this (only whitespace, control and format
   characters: Unicode categories Cc, Cf, Zs, Zl, Zp, e.g. U+200B zero-width space or a BOM) → 422
   ``empty_text``. The tokenizer drops such characters, so the model would classify ``[CLS][SEP]`` alone
   and the answer would be counted and kept for /feedback like a real prediction.
5. More tokens than MAX_TOKENS (counted by the model's tokenizer, special tokens included, no
   truncation) → 413 ``too_many_tokens``. The server never silently truncates.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ASCII_SAFE = re.compile("[\x09\x0a\x0d\x20-\x7e]*")
# Rule 4: characters that carry nothing to read. Cf (format: zero-width space/joiners, BOM, bidi controls,
# soft hyphen) is dropped by the tokenizers the server serves, as str.strip() does with whitespace.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


class InputProblem(Exception):
    """A client error in one field: HTTP status, machine-readable code, and the message."""

    def __init__(self, status: int, code: str, message: str, field: str = "text") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def normalise_text(text: str, *, field: str = "text") -> str:
    """The text the model sees, or InputProblem (rules 1–4 above)."""
    if _ASCII_SAFE.fullmatch(text) is None:  # fast path: printable ASCII needs none of this
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputProblem(
                422,
                "invalid_unicode",
                f"is not valid Unicode (character {exc.start} is a lone surrogate)",
                field,
            ) from None
        text = _CONTROLS.sub(" ", unicodedata.normalize("NFC", text))
        # Only here: a printable-ASCII text is all visible characters or whitespace, which strip() sees.
        # all() stops at the first visible character, so an ordinary text costs one lookup.
        if all(unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in text):
            text = ""
    if not text.strip():
        raise InputProblem(
            422, "empty_text", "is empty (or only whitespace, control and format characters)", field
        )
    return text


def beyond_ordinary_length(text: str, max_tokens: int) -> bool:
    """Longer than 4 characters per token of MAX_TOKENS (1024 characters at the default): where the
    word pre-check below starts to look, and where tokenizing moves off the event loop
    (serving/engine.py). Most texts the server sees are far shorter."""
    return len(text) > 4 * max_tokens


def precheck_length(text: str, max_tokens: int, *, field: str = "text") -> None:
    """Reject (413) a text that cannot fit before tokenizing it, so a huge body of words never ties up
    the event loop (one without spaces is tokenized on a thread: serving/engine.py):
    every whitespace-separated word is at least one token, so more than twice MAX_TOKENS words is
    certainly too long (the factor leaves room for tokenizers that drop characters). Words need a
    separator between them, so a text of at most 4·MAX_TOKENS characters cannot hold that many: the
    split (which copies every word) is skipped for all ordinary texts."""
    if beyond_ordinary_length(text, max_tokens) and len(text.split(maxsplit=2 * max_tokens)) > 2 * max_tokens:
        raise InputProblem(
            413,
            "too_many_tokens",
            f"has more than {2 * max_tokens} words, far more than MAX_TOKENS={max_tokens} tokens;"
            " shorten or split it",
            field,
        )


def check_token_count(n_tokens: int, max_tokens: int, *, field: str = "text") -> None:
    """Rule 5: reject (413) a text longer than MAX_TOKENS rather than truncating it."""
    if n_tokens > max_tokens:
        raise InputProblem(
            413,
            "too_many_tokens",
            f"has {n_tokens} tokens, more than MAX_TOKENS={max_tokens}; shorten or split it",
            field,
        )


def check_batch_items(n_items: int, max_items: int) -> None:
    if n_items == 0:
        raise InputProblem(422, "empty_batch", "is empty; send at least one item", "items")
    if n_items > max_items:
        raise InputProblem(
            413, "too_many_items", f"has {n_items} entries, more than the limit of {max_items}", "items"
        )
