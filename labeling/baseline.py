"""The reference workflow's method, kept for comparison: plain fuzzy matching of each class's
phrases over the whole report, with no sections, negation, uncertainty or categories.

For each task the class whose phrases match best (rapidfuzz ``partial_ratio`` at or above the
cutoff) wins, 1 before 2 before 0 on ties; a report naming the organ but none of its phrases
is 0; anything else is -1. It sees the same phrases as :class:`labeling.extract.Extractor`.
"""

from __future__ import annotations

from rapidfuzz import fuzz

from labeling.extract import EmptyReportError, TaskLabel
from labeling.tasks import TaskSet, normalise

BASELINE_CUTOFF = 90.0


class FuzzyBaseline:
    """Extracts labels the way the reference workflow did (``extraClass``)."""

    def __init__(self, tasks: TaskSet, cutoff: float = BASELINE_CUTOFF) -> None:
        self.tasks = tasks
        self.cutoff = cutoff

    def extract(self, text: str, report_type: str = "radiology") -> dict[str, TaskLabel]:
        if not text or not text.strip():
            raise EmptyReportError("the report has no text")
        normalised = normalise(text)
        labels: dict[str, TaskLabel] = {}
        for name, task in self.tasks.tasks.items():
            best: tuple[float, int, str] | None = None
            for value in (1, 2, 0):
                for phrase in task.classes[value].all():
                    score = fuzz.partial_ratio(phrase, normalised, score_cutoff=self.cutoff)
                    if score and (best is None or score > best[0]):
                        best = (score, value, phrase)
            if best is not None:
                score, value, phrase = best
                labels[name] = TaskLabel(name, value, score / 100, f"fuzzy '{phrase}'", phrase)
                continue
            site = max((fuzz.partial_ratio(p, normalised) for p in task.site.all()), default=0.0)
            if site >= self.cutoff:
                labels[name] = TaskLabel(name, 0, site / 100, "organ named")
            else:
                labels[name] = TaskLabel(name, -1, 1.0, "organ not named")
        return labels
