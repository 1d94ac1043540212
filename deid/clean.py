"""Clean free text: strip the identifiers an instance carries, and ID-like patterns.

Used for the Clean Descriptors option (descriptions, comments, protocol names are kept, the
names and IDs in them are not) and for free text inside sequences the profile keeps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

# Generic patterns that identify whoever the instance is about, whatever the attribute:
# a token with at least five digits (MRNs, accession numbers, phone numbers, serials),
# dates written with separators, telephone numbers, e-mail addresses.
_PATTERNS: Final = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+"
    r"|\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b"
    r"|\+\d[\d ()-]{6,}\d|\b\d{3}[-.]\d{3,4}[-.]\d{4}\b|\(\d{2,4}\) ?\d{3,4}[- ]\d{3,4}"
    r"|\b\w*\d{5,}\w*\b",
    re.UNICODE,
)
_EMPTY_BRACKETS: Final = re.compile(r"\(\s*\)|\[\s*\]|\{\s*\}")
_SPACES: Final = re.compile(r"\s{2,}")
_WORD: Final = re.compile(r"\w", re.UNICODE)
MIN_ASCII_TOKEN: Final = 3


def identifier_tokens(value: str, *, person_name: bool = False) -> set[str]:
    """The strings of ``value`` worth stripping from text: the whole value, and for a
    person name each component group and each component long enough to be specific."""
    value = value.strip()
    tokens: set[str] = set()
    if len(value) >= 2:
        tokens.add(value)
    if person_name:
        for group in value.split("="):
            if group.strip("^ "):
                tokens.add(group.strip())
            for component in re.split(r"[\^ ,]+", group):
                component = component.strip()
                if len(component) >= MIN_ASCII_TOKEN or (
                    len(component) >= 2 and not component.isascii()
                ):
                    tokens.add(component)
    return tokens


class TextCleaner:
    """Removes a fixed set of identifier strings (case-insensitive) and ID-like patterns."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        parts = []
        for token in sorted({t for t in identifiers if t}, key=len, reverse=True):
            escaped = re.escape(token)
            # Word-like ASCII tokens must stand alone ("DOE" is not in "DOES"); ideographic
            # names have no word boundaries to rely on.
            if token.isascii() and _WORD.match(token[0]) and _WORD.match(token[-1]):
                escaped = rf"(?<!\w){escaped}(?!\w)"
            parts.append(escaped)
        self._identifiers = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def clean(self, text: str) -> str:
        """``text`` without identifiers; whitespace and emptied brackets tidied."""
        if self._identifiers is not None:
            text = self._identifiers.sub("", text)
        text = _PATTERNS.sub("", text)
        text = _EMPTY_BRACKETS.sub("", text)
        text = _SPACES.sub(" ", text)
        return text.strip(" ;,:-")
