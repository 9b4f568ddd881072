"""Masking personal data in texts kept for review: emails, URLs, phone numbers, @handles, digits.

Masking more than needed is the safe error here: these texts exist only for a person to review.
Order matters: whole structures (emails, URLs, phone numbers) are masked before their parts (handles,
digits) so that an email is one [EMAIL] and not "[HANDLE]" inside a half-masked address.
"""

from __future__ import annotations

import re
import unicodedata

EMAIL = "[EMAIL]"
URL = "[URL]"
PHONE = "[PHONE]"
HANDLE = "[HANDLE]"
DIGIT = "#"  # every remaining digit: numbers keep their shape, not their value

# user@example.com, and user@localhost: a single-label domain is still someone's address.
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*", re.UNICODE)
_URL = re.compile(
    r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+"  # a scheme or www.
    r"|\b(?:[a-z0-9-]+\.)+[a-z]{2,24}/[^\s<>\"']*"  # a bare domain with a path: bit.ly/AbC, evil.com/t?u=x
    r"|\b(?:[a-z0-9-]+\.)+(?:com|net|org|info|biz|io|co|ly|me|app|dev|gov|edu|tv|uk|us|de|fr|ca|au)\b",
    re.IGNORECASE,
)
# International or local numbers of 7+ digits with the usual separators: +44 20 7946 0958, (555) 123-4567.
_PHONE = re.compile(r"(?<![\w])(?:\+|00)?(?:\(?\d[\d\s().-]{5,}\d)(?![\w])")
_HANDLE = re.compile(r"(?<![\w@])@\w{1,64}", re.UNICODE)
_DIGIT = re.compile(r"\d", re.UNICODE)


def _phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return PHONE if digits >= 7 else match.group(0)


def anonymise(text: str) -> str:
    # NFKC folds look-alikes (full-width ＠ and digits, ligatures) into the characters the patterns
    # know, so "＠jane" cannot slip past as something that is not a handle.
    text = unicodedata.normalize("NFKC", text)
    text = _EMAIL.sub(EMAIL, text)
    text = _URL.sub(URL, text)
    text = _PHONE.sub(_phone, text)
    text = _HANDLE.sub(HANDLE, text)
    return _DIGIT.sub(DIGIT, text)
