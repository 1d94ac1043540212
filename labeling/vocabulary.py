"""Every phrase of a task set in one compiled pattern, and what each phrase means.

A report is scanned once: a trie-shaped regular expression finds the longest phrase at each
position (English phrases only on word boundaries), and each phrase maps to its meanings
(a site of a task, a concept of a class, a negation cue, ...). Misspelled English words are
first mapped to the phrase word they resemble with rapidfuzz.
"""

from __future__ import annotations

import bisect
import enum
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from rapidfuzz import fuzz, process

from deid.clean import trie_pattern
from labeling.tasks import TaskSet


class Role(enum.IntEnum):  # int: hashed in C, and hashed a lot
    SITE = 1
    OTHER_SITE = 2
    EXCLUDE = 3
    CONCEPT = 4
    NEGATION_PRE = 5
    NEGATION_POST = 6
    UNCERTAINTY_PRE = 7
    UNCERTAINTY_POST = 8
    HISTORY_PRE = 9
    HISTORY_POST = 10
    TERMINATOR = 11
    PSEUDO = 12


CUES = {
    Role.NEGATION_PRE,
    Role.NEGATION_POST,
    Role.UNCERTAINTY_PRE,
    Role.UNCERTAINTY_POST,
    Role.HISTORY_PRE,
    Role.HISTORY_POST,
}


@dataclass(frozen=True)
class Meaning:
    """One meaning of a phrase. ``task`` is None for generic concepts and for cues."""

    role: Role
    task: str | None = None
    value: int | None = None


_WORD = re.compile(r"[a-z]+")


def _is_word_phrase(phrase: str) -> bool:
    return (
        phrase[0].isascii()
        and phrase[0].isalnum()
        and phrase[-1].isascii()
        and phrase[-1].isalnum()
    )


class Vocabulary:
    """The phrases of ``tasks`` with their meanings, and the fuzzy word corrector."""

    def __init__(self, tasks: TaskSet) -> None:
        self.meanings: dict[str, list[Meaning]] = {}
        for name, task in tasks.tasks.items():
            for phrase in task.site.all():
                self._add(phrase, Meaning(Role.SITE, name))
            for phrase in task.exclude.all():
                self._add(phrase, Meaning(Role.EXCLUDE, name))
            for value, definition in task.classes.items():
                for phrase in definition.all():
                    self._add(phrase, Meaning(Role.CONCEPT, name, value))
        for value, generic in tasks.generic.classes.items():
            for phrase in generic.all():
                self._add(phrase, Meaning(Role.CONCEPT, None, value))
        for phrase in tasks.generic.other_sites:
            self._add(phrase, Meaning(Role.OTHER_SITE))
        triggers = tasks.triggers
        for role, cues in (
            (Role.NEGATION_PRE, triggers.negation_pre),
            (Role.NEGATION_POST, triggers.negation_post),
            (Role.UNCERTAINTY_PRE, triggers.uncertainty_pre),
            (Role.UNCERTAINTY_POST, triggers.uncertainty_post),
            (Role.HISTORY_PRE, triggers.history_pre),
            (Role.HISTORY_POST, triggers.history_post),
            (Role.TERMINATOR, triggers.terminators),
            (Role.PSEUDO, triggers.pseudo),
        ):
            for cue in cues:
                self._add(cue, Meaning(role))

        # Two scans: a pattern that starts with a literal lets the regex engine skip to the
        # next possible first character in C, which a leading look-behind would prevent.
        words = [p for p in self.meanings if _is_word_phrase(p)]
        others = [p for p in self.meanings if not _is_word_phrase(p)]
        self._word_pattern = (
            re.compile(r"\b(?:" + trie_pattern(words) + r")(?![a-z0-9])", re.ASCII)
            if words
            else None
        )
        self._other_pattern = re.compile(trie_pattern(others)) if others else None

        self.known_words = frozenset(w for p in self.meanings for w in _WORD.findall(p))
        self._words_by_initial: dict[str, list[str]] = {}
        for word in sorted(self.known_words):
            if len(word) >= tasks.matching.min_word_length - 2:
                self._words_by_initial.setdefault(word[0], []).append(word)
        self.fuzzy_cutoff = tasks.matching.fuzzy_cutoff
        self.min_word_length = tasks.matching.min_word_length
        self.correct = lru_cache(maxsize=65536)(self._correct)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Every phrase in ``text`` as (start, end, phrase), leftmost-longest, no overlaps."""
        found = [
            (m.start(), m.end(), m.group())
            for pattern in (self._word_pattern, self._other_pattern)
            if pattern is not None
            for m in pattern.finditer(text)
        ]
        found.sort(key=lambda f: (f[0], f[0] - f[1]))
        kept: list[tuple[int, int, str]] = []
        end = 0
        for match in found:
            if match[0] >= end:
                kept.append(match)
                end = match[1]
        return kept

    def _add(self, phrase: str, meaning: Meaning) -> None:
        meanings = self.meanings.setdefault(phrase, [])
        if meaning not in meanings:
            meanings.append(meaning)

    def _correct(self, word: str) -> tuple[str, float] | None:
        """The known word ``word`` is a misspelling of, with the score; None if none is close.

        Only words of the same first letter and about the same length are candidates:
        typing errors rarely hit the first letter, and "abnormal" must never become "normal".
        """
        candidates = [
            w for w in self._words_by_initial.get(word[0], ()) if abs(len(w) - len(word)) <= 2
        ]
        if not candidates:
            return None
        best = process.extractOne(
            word, candidates, scorer=fuzz.ratio, score_cutoff=self.fuzzy_cutoff
        )
        return (best[0], float(best[1])) if best else None


@dataclass(frozen=True)
class Corrected:
    """A text with misspelled words replaced, and the way back to the original offsets."""

    text: str
    fixes: tuple[tuple[int, int, int, int, str, float], ...] = ()
    """(start, end in ``text``, start, end in the original, original word, score)"""

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        if not self.fixes:
            return start, end
        return self._map(start, left=True), self._map(end, left=False)

    def _map(self, position: int, *, left: bool) -> int:
        starts = [fix[0] for fix in self.fixes]
        index = bisect.bisect_right(starts, position) - 1
        if index < 0:
            return position
        _, end, orig_start, orig_end, _, _ = self.fixes[index]
        if position < end or (position == end and not left):
            return orig_start if left else orig_end
        return orig_end + (position - end)

    def score(self, start: int, end: int) -> tuple[float, str]:
        """The lowest fuzzy score of a corrected word inside [start, end) (100 if none)."""
        worst, note = 100.0, ""
        # fixes are in text order and do not overlap: those ending after ``start`` onwards
        for index in range(bisect.bisect_right(self._ends, start), len(self.fixes)):
            fix_start, _, _, _, word, score = self.fixes[index]
            if fix_start >= end:
                break
            if score < worst:
                worst, note = score, word
        return worst, note

    @cached_property
    def _ends(self) -> list[int]:
        return [fix[1] for fix in self.fixes]


def correct_words(text: str, vocabulary: Vocabulary) -> Corrected:
    """Replace misspelled English words of ``text`` by the phrase words they resemble."""
    fixes: list[tuple[int, int, int, int, str, float]] = []
    pieces: list[str] = []
    last = 0
    shift = 0
    known = vocabulary.known_words
    for match in _WORD.finditer(text):
        word = match.group()
        if len(word) < vocabulary.min_word_length or word in known:
            continue
        fixed = vocabulary.correct(word)
        if fixed is None:
            continue
        replacement, score = fixed
        pieces.append(text[last : match.start()])
        start = match.start() + shift
        pieces.append(replacement)
        fixes.append((start, start + len(replacement), match.start(), match.end(), word, score))
        shift += len(replacement) - len(word)
        last = match.end()
    if not fixes:
        return Corrected(text)
    pieces.append(text[last:])
    return Corrected("".join(pieces), tuple(fixes))
