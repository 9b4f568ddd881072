"""Masking personal data in texts kept for review: emails, URLs, phone numbers, @handles, digits.

Order matters: whole structures (emails, URLs, phone numbers) are masked before their parts (handles,
digits) so that an email is one [EMAIL] and not "[HANDLE]" inside a half-masked address.
"""

from __future__ import annotations

import re

EMAIL = "[EMAIL]"
URL = "[URL]"
PHONE = "[PHONE]"
HANDLE = "[HANDLE]"
DIGIT = "#"  # every remaining digit: numbers keep their shape, not their value

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
# International or local numbers of 7+ digits with the usual separators: +44 20 7946 0958, (555) 123-4567.
_PHONE = re.compile(r"(?<![\w])(?:\+|00)?(?:\(?\d[\d\s().-]{5,}\d)(?![\w])")
_HANDLE = re.compile(r"(?<![\w@])@\w{1,64}", re.UNICODE)
_DIGIT = re.compile(r"\d", re.UNICODE)


def _phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return PHONE if digits >= 7 else match.group(0)


def anonymise(text: str) -> str:
    text = _EMAIL.sub(EMAIL, text)
    text = _URL.sub(URL, text)
    text = _PHONE.sub(_phone, text)
    text = _HANDLE.sub(HANDLE, text)
    return _DIGIT.sub(DIGIT, text)
