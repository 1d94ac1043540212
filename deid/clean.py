"""Clean free text: strip the identifiers an instance carries, and ID-like patterns.

Used for the Clean Descriptors option (descriptions, comments, protocol names are kept, the
names and IDs in them are not) and for free text inside sequences the profile keeps.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NamedTuple

# Generic patterns that identify whoever the instance is about, whatever the attribute:
# e-mail addresses (local part: word characters and ``.+-``; see replace_emails), a token
# with at least five digits (MRNs, accession numbers, phone numbers, serials), dates written
# with separators, telephone numbers.
_EMAIL_DOMAIN: Final = re.compile(r"(?<![\w-])[\w-]+\.[\w.-]+")
_PATTERNS: Final = re.compile(
    r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b"
    r"|\+\d[\d ()-]{6,}\d|\b\d{3}[-.]\d{3,4}[-.]\d{4}\b|\(\d{2,4}\) ?\d{3,4}[- ]\d{3,4}"
    r"|\b\w*\d{5,}\w*\b",
    re.UNICODE,
)
_EMPTY_BRACKETS: Final = re.compile(r"\(\s*\)|\[\s*\]|\{\s*\}")
_SPACES: Final = re.compile(r"\s{2,}")
_WORD: Final = re.compile(r"\w", re.UNICODE)
MIN_ASCII_TOKEN: Final = 3
MAX_TOKEN: Final = 64
"""Identifiers are matched in pieces of at most this many characters (the DICOM limit of an
LO value or a PN component group): matching then costs at most this much per character of
text, whatever the number and length of the identifiers."""

_Trie = dict[str, "_Trie"]


def trie_pattern(phrases: Iterable[str], end: Mapping[str, str] | None = None) -> str:
    """A regular expression matching any of ``phrases``, longest first, without backtracking
    over a long alternation (one branch per distinct next character): at each position of a
    text it costs at most the length of the longest phrase, however many there are.

    ``end`` may give a phrase a zero-width condition (a look-around) the text must meet where
    the phrase ends; where it fails, shorter phrases are tried.
    """
    trie: _Trie = {}
    for phrase in phrases:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: _Trie, prefix: str) -> str:
        branches = [
            re.escape(char) + build(node[char], prefix + char) for char in sorted(node) if char
        ]
        if "" not in node:
            if len(branches) == 1:
                return branches[0]
            return "(?:" + "|".join(branches) + ")" if branches else ""
        condition = (end or {}).get(prefix, "")
        if not branches:
            return condition
        if not condition:
            return "(?:" + "|".join(branches) + ")?"
        return "(?:" + "|".join([*branches, condition]) + ")"

    return build(trie, "")


def replace_emails(
    text: str, replacement: str, *, local: Callable[[str], bool], domain: re.Pattern[str]
) -> str:
    """``text`` with every e-mail address replaced: what ``re.sub`` of
    ``L+@D`` would do (``L`` the characters ``local`` accepts, ``D`` the pattern ``domain``),
    in linear time.

    Searched as one pattern, ``L+@D`` is quadratic: from every start inside a long run of
    ``L`` characters it scans to the run's end. Here each ``@`` is the anchor: the local
    part is the run before it (never reaching into the previous replacement), ``domain`` is
    matched right after it. The runs before two ``@`` do not overlap, nor do their domains.
    """
    pieces: list[str] = []
    done = 0
    at = text.find("@")
    while at != -1:
        start = at
        while start > done and local(text[start - 1]):
            start -= 1
        found = domain.match(text, at + 1) if start < at else None
        if found is None:
            at = text.find("@", at + 1)
            continue
        pieces += (text[done:start], replacement)
        done = found.end()
        at = text.find("@", done)
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _email_local(char: str) -> bool:
    return char.isalnum() or char in "_.+-"


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


class Identifier(NamedTuple):
    """A value to find in text, and whether it must stand alone on each side."""

    text: str
    alone_before: bool = False
    alone_after: bool = False


def fold(text: str) -> str:
    """``text`` in lower case where that keeps its length: how :func:`identifier_pattern`
    keys what it matches (it ignores case)."""
    return "".join(c if len(low := c.lower()) != 1 else low for c in text)


def identifier_pattern(
    identifiers: Iterable[Identifier], boundary: str
) -> tuple[re.Pattern[str] | None, dict[str, str]]:
    """One case-insensitive pattern matching any of ``identifiers``, longest first, and the
    identifier (folded) each folded piece it can match belongs to.

    The pattern is a trie, so it costs the same per character of text with three identifiers
    or three thousand. "Alone" means the character before (after) is not in the class
    ``boundary`` ("DOE" is not in "DOES"): a trie cannot start with a look-behind, so the
    character before is checked where the identifier ends. An identifier longer than
    ``MAX_TOKEN`` (invalid DICOM) is matched as consecutive pieces, each wherever it stands.
    """
    conditions: dict[str, str] = {}
    owners: dict[str, str] = {}
    loose: set[str] = set()
    for identifier in identifiers:
        text = fold(identifier.text)
        if not text:
            continue
        if len(text) > MAX_TOKEN:
            for start in range(0, len(text), MAX_TOKEN):
                loose.add(piece := text[start : start + MAX_TOKEN])
                owners.setdefault(piece, text)
            continue
        owners.setdefault(text, text)
        condition = (
            rf"(?<!{boundary}[\s\S]{{{len(text)}}})" if identifier.alone_before else ""
        ) + (rf"(?!{boundary})" if identifier.alone_after else "")
        if condition and text not in loose:
            conditions.setdefault(text, condition)
        else:
            loose.add(text)
    for text in loose:
        conditions.pop(text, None)  # the weaker condition wins
    texts = loose | conditions.keys()
    if not texts:
        return None, owners
    return re.compile(trie_pattern(texts, conditions), re.IGNORECASE), owners


def _word_like(token: str) -> Identifier:
    alone = token.isascii() and bool(_WORD.match(token[0])) and bool(_WORD.match(token[-1]))
    return Identifier(token, alone, alone)


class TextCleaner:
    """Removes a fixed set of identifier strings (case-insensitive) and ID-like patterns.

    A word-like ASCII identifier must stand alone ("DOE" is not in "DOES"); ideographic
    names have no word boundaries to rely on.
    """

    def __init__(self, identifiers: Iterable[str]) -> None:
        self._identifiers, _ = identifier_pattern(map(_word_like, filter(None, identifiers)), r"\w")

    def clean(self, text: str) -> str:
        """``text`` without identifiers; whitespace and emptied brackets tidied."""
        if self._identifiers is not None:
            text = self._identifiers.sub("", text)
        text = replace_emails(text, "", local=_email_local, domain=_EMAIL_DOMAIN)
        text = _PATTERNS.sub("", text)
        text = _EMPTY_BRACKETS.sub("", text)
        text = _SPACES.sub(" ", text)
        return text.strip(" ;,:-")


_CLEANERS: dict[frozenset[str], TextCleaner] = {}
_CLEANERS_LOCK = threading.Lock()
_CLEANERS_LIMIT: Final = 1024


def cleaner_for(identifiers: frozenset[str]) -> TextCleaner:
    """The :class:`TextCleaner` of ``identifiers``, built once per set: the instances of a
    series carry the same identifiers, and compiling their pattern cost more than cleaning
    (a bounded cache in memory only; it holds originals as the walk does)."""
    cleaner = _CLEANERS.get(identifiers)
    if cleaner is None:
        cleaner = TextCleaner(identifiers)
        with _CLEANERS_LOCK:
            if len(_CLEANERS) >= _CLEANERS_LIMIT:
                _CLEANERS.clear()
            _CLEANERS[identifiers] = cleaner
    return cleaner
