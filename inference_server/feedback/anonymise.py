"""Masking personal data in texts kept for review: emails, URLs, domains, phone numbers, @handles, digits.

Masking more than needed is the safe error here: these texts exist only for a person to review.
Order matters: whole structures are masked before their parts, so that an email is one [EMAIL] and not
"[HANDLE]" inside a half-masked address, and a handle "@jane.doe" is one [HANDLE], not "@[URL]".

Every pattern runs in time linear in the text. ``re`` backtracks and holds the GIL while it does, so a
pattern that is retried from every position of a long run of word characters (quadratic) would
freeze the whole server for minutes on one 256 KiB "word". Hence: a pattern that starts with a
repeated class starts only where that class does not continue to the left (a negative lookbehind),
repetitions that never need to give back are possessive, and the rest are bounded.
"""

from __future__ import annotations

import re
import unicodedata

EMAIL = "[EMAIL]"
URL = "[URL]"
PHONE = "[PHONE]"
HANDLE = "[HANDLE]"
DIGIT = "#"  # every remaining digit: numbers keep their shape, not their value

# The local part of an address: RFC 5322 "atext" and the dot (o'brien@, first%last@, x+tag@).
_LOCAL = r"\w.!#$%&'*+/=?^`{|}~\-"  # the characters, for use inside [...]
# An address is the whole run of local-part characters and "@" around a "x@y" (less a final dot, which
# ends the sentence): user@example.com, user@localhost (a single-label domain is still someone's
# address), x@@jane, a@b+@c. Masking the whole run leaves no half of it for another pattern to see.
_EMAIL = re.compile(rf"(?<![{_LOCAL}@])(?=[{_LOCAL}@]*?[{_LOCAL}]@+[\w-])[{_LOCAL}@]+(?<!\.)")
# A scheme anywhere ("1http://" too); "www." not inside a word. "#" counts as part of a word because a
# digit does, and digits become "#": anonymising the result again must change nothing.
_URL = re.compile(r"(?:(?:https?|ftp)://|(?<![\w#])www\.)[^\s<>\"']+", re.IGNORECASE)
# A bare domain: labels and an alphabetic top-level label of 2+ letters, with any path, query or
# fragment: janedoe.xyz, bücher.de, bit.ly/AbC, foo.ru?ref=1. The top-level label is all lower case,
# all upper case, a common one in any case, or in a script without case; a capitalised word after a
# missing space ("the end.The film") is a sentence, not a domain, unless a path follows it.
# It starts only where a dotted name does (not inside a word or after "label."; after ".." it may):
# one attempt per name, which covers every suffix.
_KNOWN_TLDS = "com|net|org|info|biz|io|co|ly|me|app|dev|gov|edu|tv|uk|us|de|fr|ca|au"
_TLD = rf"(?:[a-z]{{2,63}}|[A-Z]{{2,63}}|(?i:{_KNOWN_TLDS})|[^\W\d_a-zA-Z]{{2,63}})"
_DOMAIN = re.compile(
    r"(?<![\w-])(?<![\w-]\.)(?:[\w-]++\.)+"
    rf"(?:{_TLD}(?![^\W\d]|-)|[^\W\d_]{{2,63}}(?=/))"  # a digit may follow: it is masked anyway
    r"(?:[/?#][^\s<>\"']*)?"
)
# International or local numbers of 7+ digits with the usual separators: +44 20 7946 0958, (555) 123-4567.
_PHONE = re.compile(r"(?<![\w])(?:\+|00)?(?:\(?\d[\d\s().-]{5,32}\d)(?![\w])")
# @jane, @@jane, @jane.doe, @jane-doe: from the first "@" of a run, the whole dotted name (less the
# dots or hyphens that end it), so that no part of it is left to look like a domain.
_HANDLE = re.compile(r"(?<!@)@+\w[\w.-]*(?<![.-])")
_DIGIT = re.compile(r"\d")


def _phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return PHONE if digits >= 7 else match.group(0)


def strip_format_characters(text: str) -> str:
    """``text`` without Unicode format characters (category Cf: zero-width spaces and joiners, soft
    hyphens, direction marks): invisible, they would split "jane\\u200b@mail.com" into two harmless
    looking parts."""
    if text.isascii():  # no ASCII character is Cf
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def anonymise(text: str) -> str:
    # NFKC folds look-alikes (full-width ＠ and digits, ligatures) into the characters the patterns
    # know, so "＠jane" cannot slip past as something that is not a handle.
    text = unicodedata.normalize("NFKC", strip_format_characters(text))
    text = _EMAIL.sub(EMAIL, text)
    text = _URL.sub(URL, text)
    text = _HANDLE.sub(HANDLE, text)  # before domains: @jane.doe is one [HANDLE]
    text = _DOMAIN.sub(URL, text)
    text = _PHONE.sub(_phone, text)
    return _DIGIT.sub(DIGIT, text)
