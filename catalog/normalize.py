"""Normalised copies of text values that the catalog matches on (written once, at index time).

- :func:`fold` gives the case- and accent-insensitive form kept in the ``*_ci`` columns, so a
  case-insensitive match is a plain comparison an index can serve.
- :func:`name_key` gives the word list kept in the ``*_fuzzy`` columns for fuzzy person-name
  matching (QIDO-RS ``fuzzymatching=true``): every word of every component and component
  group, folded, each followed by its Soundex code, so "jon" finds "DOE^JOHN".
- :func:`sex` gives Patient's Sex as one of the three codes of PS3.3 (``M``, ``F``, ``O``).
"""

from __future__ import annotations

import re
import unicodedata

import jellyfish

_WORD_SPLIT = re.compile(r"[\s^=,.'\-]+")
_PHONETIC_MARK = "#"
"""Prefix of a Soundex code in a name key, so a code never equals a folded word."""


_SEXES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def sex(value: str | None) -> str | None:
    """Patient's Sex (0010,0040) as ``M``, ``F`` or ``O``, else ``None``: real headers hold
    ``0000``, ``U``, ``m`` or ``Male``, and only the three codes may reach a cohort filter,
    a preview or a manifest."""
    return _SEXES.get((value or "").strip().upper())


def fold(value: str | None) -> str | None:
    """``value`` without case or accents (``"Müller^Jürgen"`` -> ``"muller^jurgen"``)."""
    if not value:
        return None
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped).casefold()


def name_words(value: str) -> list[str]:
    """The folded words of a person name or a free-text query (wildcards removed)."""
    folded = fold(value.replace("*", " ").replace("?", " ")) or ""
    return [word for word in _WORD_SPLIT.split(folded) if word]


def phonetic(word: str) -> str | None:
    """The Soundex code of a word written in Latin letters, ``None`` for other scripts."""
    if not word.isascii() or not word.isalpha():
        return None
    return _PHONETIC_MARK + jellyfish.soundex(word).lower()


def name_key(value: str | None) -> str | None:
    """The fuzzy-matching key of a person name: ``" doe #d000 john #j500 "``.

    Words are separated by single spaces with one space at each end, so "a word starting
    with w" is ``LIKE '% w%'`` and "a word with code c" is ``LIKE '% c %'``.
    """
    if not value:
        return None
    parts: list[str] = []
    for word in name_words(value):
        parts.append(word)
        code = phonetic(word)
        if code:
            parts.append(code)
    return f" {' '.join(parts)} " if parts else None
