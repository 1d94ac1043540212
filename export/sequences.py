"""Which sequence (or contrast phase) a series is, from how its scanner named it.

Every scanner names the same sequence differently ("T2 TSE", "t2_tse_tra", "AX T2 FSE"), so a
series' description, protocol name and sequence name are split into words and each configured
synonym is matched word by word with rapidfuzz: a synonym matches when each of its words has a
close enough word in the names. The family of the longest matching synonym wins, so
"T1 POST GD" is T1C (synonym "t1 post") rather than T1 (synonym "t1").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rapidfuzz import fuzz, process

from config.export import SequenceFamily

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> tuple[str, ...]:
    """Lower-case alphanumeric words; ``t2_tse_tra`` -> ``("t2", "tse", "tra")``."""
    return tuple(_WORD.findall(text.lower()))


class SequenceMatcher:
    """Classifies series names into the configured sequence families.

    Parameters
    ----------
    families
        Family names and their synonyms (``export.sequences``).
    threshold
        rapidfuzz ratio (0-100) each word of a synonym must reach against a word of the name.
    """

    def __init__(self, families: Sequence[SequenceFamily], threshold: float) -> None:
        self.names = tuple(family.name for family in families)
        self._synonyms = [
            (family.name, synonym_words)
            for family in families
            for synonym_words in (words(s) for s in family.synonyms)
            if synonym_words
        ]
        self.threshold = threshold
        self.classify = lru_cache(maxsize=16384)(self._classify)

    def family_named(self, name: str) -> str | None:
        """The configured family called ``name`` (case-insensitive), if any."""
        return next((n for n in self.names if n.casefold() == name.casefold()), None)

    def _classify(self, *names: str | None) -> str | None:
        """The family of the series named ``names`` (description, protocol, sequence)."""
        name_words = [w for name in names if name for w in words(name)]
        if not name_words:
            return None
        best: tuple[int, float, str] | None = None
        for family, synonym_words in self._synonyms:
            scores = []
            for word in synonym_words:
                match = process.extractOne(
                    word, name_words, scorer=fuzz.ratio, score_cutoff=self.threshold
                )
                if match is None:
                    break
                scores.append(match[1])
            else:
                candidate = (len(synonym_words), sum(scores) / len(scores), family)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
        return best[2] if best else None
