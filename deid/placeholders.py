"""Values that stand for "no value": what a modality, a RIS or an earlier anonymizer writes
where it has nothing (``0``, ``N/A``, ``UNKNOWN``, ``ANONYMIZED``, ``^^^^``, ``19000101``).

They identify nobody and are shared by unrelated patients and exams, so they must never
link a report to a study, nor count as an original value that leaked (the node writes some
of them itself as the dummy values of the profile).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

PLACEHOLDER_WORDS: Final = frozenset(
    {
        "anon",
        "anonymous",
        "anonymized",
        "anonymised",
        "unknown",
        "unk",
        "none",
        "null",
        "nil",
        "n/a",
        "na",
        "not available",
        "no name",
        "noname",
        "test",
        "dcm",
        "removed",
        "deleted",
        "empty",
        "blank",
        "unnamed",
        "patient",
        "urn:anonymized",
    }
)
"""Words (compared case-insensitively, runs of separators read as one space) that mean "no
value", including the node's own dummy text (``ANONYMIZED``, ``urn:anonymized``)."""

PLACEHOLDER_DATES: Final = frozenset({"19000101", "19000101000000", "000000"})
"""The node's dummy date, date-time and time (``deid.engine``), and dates systems write for
"unknown"; ``00000000`` and ``11111111`` are caught as one repeated digit."""

_SEPARATORS: Final = re.compile(r"[\s^=_.,;:/\\|*-]+")


def is_placeholder(value: str | None) -> bool:
    """Whether ``value`` stands for "no value" rather than for someone or something.

    True for: nothing, whitespace or separators only (``""``, ``"-"``, ``"^^^^"``); one
    character repeated (``0``, ``000``, ``9999``, ``XXXX``); a placeholder word, alone or
    repeated (``N/A``, ``UNKNOWN``, ``Anonymous^``, ``ANON^ANON``); a placeholder date.
    """
    text = (value or "").strip().strip("\0").casefold()
    if not any(c.isalnum() for c in text):
        return True
    compact = _SEPARATORS.sub("", text)
    if len(set(compact)) == 1:
        return True
    if text in PLACEHOLDER_WORDS or compact in PLACEHOLDER_DATES:
        return True
    words = [w for w in _SEPARATORS.split(text) if w]
    return " ".join(words) in PLACEHOLDER_WORDS or all(w in PLACEHOLDER_WORDS for w in words)


def common_placeholders() -> Iterator[str]:
    """The placeholder values systems write most (each placeholder word in three cases, each
    digit repeated up to 16 times, separators): a finite list, for when only pseudonyms are
    at hand and the pseudonyms of placeholders must be recognised."""
    yield from ("-", "--", ".", "^", "*", "?")
    for word in sorted(PLACEHOLDER_WORDS):
        yield from {word, word.upper(), word.title()}
    for digit in "0123456789":
        for count in range(1, 17):
            yield digit * count
