"""Label extraction from one report's text, negation- and uncertainty-aware.

How one report is read:

1. Normalise (NFKC, lower case) and correct misspelled English words (rapidfuzz).
2. Split into sections (conclusion / findings / history, by their headings), sentences
   (。 ; ! . newline) and clauses (Chinese commas and words such as "but", 但).
3. Find every phrase in one pass: organ sites, concepts of a class (organ-specific such as
   胰腺癌 / "hepatic metastases", or generic such as 癌 / "mass" / 囊肿), cues, and the
   reporting-system categories (BI-RADS, Lung-RADS, LI-RADS).
4. Give each concept and category a status from the cues of its clause: negated, uncertain,
   historical or affirmed. A "pre" cue acts on what follows it in the clause, a "post" cue on
   what precedes it; the nearest negation/uncertainty cue wins.
5. Attach generic concepts to the organs named in the same clause (not across another organ),
   else earlier in the sentence or section, else to the report's only organ.
6. Per task, prefer evidence from the conclusion when it addresses the organ; the class is
   1 if anything malignant is affirmed, else 2 if anything is hedged or indeterminate, else 0
   if the organ is addressed, else -1. Historical mentions never address an organ.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from labeling.tasks import TaskDefinition, TaskSet, normalise
from labeling.vocabulary import CUES, Corrected, Meaning, Role, Vocabulary, correct_words

_SENTENCE_BREAK = re.compile(r"[。;!\n.]")
_COMMA = re.compile(",")
_SIZE = re.compile(
    r"(?<!\d)(\d++(?:\.\d++)?)(?:\s*+[x×*]\s*+(\d++(?:\.\d++)?))?(?:\s*+[x×*]\s*+(\d++(?:\.\d++)?))?"
    r"\s*+(mm|cm|毫米|厘米)(?![a-z])"
)

_PRIORITY = {1: 3, 2: 2, 0: 1, -1: 0}

CONFIDENCE_SPECIFIC = 0.95
CONFIDENCE_CATEGORY = 0.97
CONFIDENCE_SAME_CLAUSE = 0.9
CONFIDENCE_SAME_SENTENCE = 0.85
CONFIDENCE_SAME_SECTION = 0.8
CONFIDENCE_REPORT_TOPIC = 0.7
CONFIDENCE_SITE_ONLY = 0.7
CONFIDENCE_NOT_ADDRESSED = 0.9
CONFIDENCE_HISTORY_ONLY = 0.8
OUTSIDE_CONCLUSION = 0.9
POST_CUE_REACH = 30
"""Characters before a "post" cue it can act on ("hepatocellular carcinoma, ..., margins
negative" must not negate the carcinoma)."""
_CONJUNCTION = re.compile(r"(?<!\s)\s*+(?:and|or|,|、|和|及|与|/)\s*+")
_SPECIMEN = re.compile(r"\([^()]{1,40}\)")
CONFLICT = 0.8


class EmptyReportError(ValueError):
    """The report has no text to extract labels from."""


@dataclass(frozen=True)
class TaskLabel:
    """One task's answer for one report, with its evidence.

    ``span_start``/``span_end`` index the NFKC-normalised text of the report (the same
    characters as the original for all but compatibility characters such as full-width
    punctuation); ``span_text`` is the evidence as it stands there.
    """

    task: str
    value: int
    confidence: float
    rule: str
    span_text: str = ""
    span_start: int | None = None
    span_end: int | None = None
    category: str | None = None
    size_mm: float | None = None


@dataclass
class _Item:
    start: int
    end: int
    text: str
    meanings: list[Meaning]
    clause: int = 0
    sentence: int = 0
    section: int = 0
    roles: frozenset[Role] = frozenset()
    site: str | None = None
    """The task whose organ the item names, "" for an organ of no task, None if none."""
    named: str | None = None
    """Like ``site``, counting organ-specific concepts (胰腺癌 names the pancreas) too."""

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.roles = frozenset(m.role for m in self.meanings)
        self.site = self.named = None
        for meaning in self.meanings:
            if meaning.role is Role.SITE:
                self.site = self.named = meaning.task
                return
        for meaning in self.meanings:
            if meaning.role is Role.CONCEPT and meaning.task is not None:
                self.named = meaning.task
                break
        if Role.OTHER_SITE in self.roles:
            self.site = ""
            self.named = self.named if self.named is not None else ""


@dataclass
class _Evidence:
    value: int
    confidence: float
    rule: str
    item: _Item | None
    in_conclusion: bool
    is_site_only: bool = False
    category: str | None = None
    concept: int = 0
    """The class of the phrase itself (before negation or hedging): with equal classes,
    "考虑胰腺癌" explains a 2 better than "胰头占位"."""


@dataclass
class _Status:
    negated: str | None = None
    uncertain: str | None = None
    history: str | None = None


@dataclass
class _Report:
    text: str
    corrected: Corrected
    items: list[_Item] = field(default_factory=list)
    categories: dict[str, list[tuple[_Item, str]]] = field(default_factory=dict)
    section_kinds: list[str] = field(default_factory=list)
    clause_starts: list[int] = field(default_factory=list)
    sentence_starts: list[int] = field(default_factory=list)
    section_starts: list[int] = field(default_factory=list)
    by_clause: dict[int, list[_Item]] = field(default_factory=dict)
    position: dict[int, int] = field(default_factory=dict)
    statuses: dict[int, _Status] = field(default_factory=dict)
    topics: set[str] = field(default_factory=set)
    clause_indexes: dict[int, _ClauseIndex] = field(default_factory=dict)
    owners: dict[tuple[int, str], _Item | None] = field(default_factory=dict)
    _named_before: dict[int, _Item] | None = None

    def named_before(self, clause: int) -> _Item | None:
        """The last item before ``clause`` that names an organ (concepts count); built on
        first use, once the items' meanings are final."""
        if self._named_before is None:
            self._named_before = {}
            last: _Item | None = None
            clause_now = None
            for item in self.items:
                if item.clause != clause_now and last is not None:
                    self._named_before[item.clause] = last
                clause_now = item.clause
                if _site_of(item, concepts=True) is not None:
                    last = item
        return self._named_before.get(clause)

    def clause(self, number: int) -> _ClauseIndex:
        index = self.clause_indexes.get(number)
        if index is None:
            index = self.clause_indexes[number] = _ClauseIndex(self.by_clause.get(number, []))
        return index


class _Sorted:
    """Items in text order with their starts and ends, for bisection."""

    def __init__(self, items: Iterable[_Item]) -> None:
        self.items = list(items)
        self.starts = [item.start for item in self.items]
        self.ends = [item.end for item in self.items]

    def last_ending_by(self, position: int) -> _Item | None:
        """The last item that ends at or before ``position``."""
        index = bisect.bisect_right(self.ends, position) - 1
        return self.items[index] if index >= 0 else None

    def first_starting_from(self, position: int) -> _Item | None:
        """The first item that starts at or after ``position``."""
        index = bisect.bisect_left(self.starts, position)
        return self.items[index] if index < len(self.items) else None

    def any_starting_in(self, low: int, high: int) -> bool:
        return bisect.bisect_left(self.starts, low) < bisect.bisect_left(self.starts, high)


class _ClauseIndex:
    """What the status and attachment rules look up in one clause, built once, so that a
    clause of thousands of phrases costs a bisection per phrase, not a scan."""

    def __init__(self, items: list[_Item]) -> None:
        cues = [i for i in items if i.roles & CUES and Role.PSEUDO not in i.roles]
        self.cues = {role: _Sorted(i for i in cues if role in i.roles) for role in CUES}
        self.other_sites = _Sorted(i for i in items if Role.OTHER_SITE in i.roles)
        self.has_site = any(_site_of(i) is not None for i in items)
        self.naming = sum(1 for i in items if _site_of(i, concepts=True))
        """How many items name an organ of a task (concepts count)."""
        self._named: dict[str, _Sorted] = {}
        self._items = items

    def named(self, task: str) -> _Sorted:
        """The items naming ``task``'s organ (concepts count), among the clause's sites when
        it has any, else among all its items."""
        found = self._named.get(task)
        if found is None:
            found = self._named[task] = _Sorted(
                i
                for i in self._items
                if _site_of(i, concepts=True) == task
                and (_site_of(i) is not None or not self.has_site)
            )
        return found


class Extractor:
    """Extracts every task's label from report texts; safe to share between threads."""

    def __init__(self, tasks: TaskSet) -> None:
        self.tasks = tasks
        self.vocabulary = Vocabulary(tasks)
        self._categories = {
            name: (re.compile(task.category.pattern), task.category.hints)
            for name, task in tasks.tasks.items()
            if task.category is not None
        }
        headings: list[tuple[str, str]] = [
            (normalise(h), kind)
            for kind, names in (
                ("history", tasks.sections.history),
                ("conclusion", tasks.sections.conclusion),
                ("findings", tasks.sections.findings),
            )
            for h in names
        ]
        self._heading_kind = dict(headings)
        alternation = "|".join(re.escape(h) for h, _ in sorted(headings, key=lambda x: -len(x[0])))
        self._headings = re.compile(rf"(?<![a-z])({alternation})\s*:$")

    # ------------------------------------------------------------------ public

    def extract(self, text: str, report_type: str = "radiology") -> dict[str, TaskLabel]:
        """Every task's label for one report."""
        if not text or not text.strip():
            raise EmptyReportError("the report has no text")
        report = self._read(text)
        if report_type == "pathology":
            _drop_specimen_concepts(report)
        return {
            name: self._label(report, task, report_type) for name, task in self.tasks.tasks.items()
        }

    # ------------------------------------------------------------------ reading

    def _read(self, text: str) -> _Report:
        normalised = normalise(text)
        corrected = correct_words(normalised, self.vocabulary)
        body = corrected.text
        report = _Report(normalised, corrected)

        report.section_starts, report.section_kinds = [0], ["body"]
        colon = body.find(":")
        while colon != -1:
            heading = self._headings.search(body, max(0, colon - 24), colon + 1)
            if heading:
                report.section_starts.append(heading.end())
                report.section_kinds.append(self._heading_kind[heading.group(1)])
            colon = body.find(":", colon + 1)

        meanings = self.vocabulary.meanings
        report.items = [
            _Item(start, end, phrase, meanings[phrase])
            for start, end, phrase in self.vocabulary.find(body)
        ]
        for name, (pattern, hints) in self._categories.items():
            if hints and not any(hint in body for hint in hints):
                continue
            for match in pattern.finditer(body):
                value = re.sub(r"\s+", "", match.group(1))
                item = _Item(match.start(), match.end(), match.group(), [])
                report.categories.setdefault(name, []).append((item, value))

        sentence_breaks = {m.end() for m in _SENTENCE_BREAK.finditer(body) if _ends(body, m)}
        sentence_breaks.update(report.section_starts)
        clause_breaks = set(sentence_breaks)
        clause_breaks.update(m.end() for m in _COMMA.finditer(body) if _cjk_comma(body, m.start()))
        clause_breaks.update(
            item.start
            for item in report.items
            if any(m.role is Role.TERMINATOR for m in item.meanings)
        )
        # a heading's own words belong to the section before it, not to its content
        report.sentence_starts = sorted(sentence_breaks | {0})
        report.clause_starts = sorted(clause_breaks | {0})
        for number, item in enumerate(report.items):
            self._place(report, item)
            report.by_clause.setdefault(item.clause, []).append(item)
            report.position[id(item)] = number
            site = _site_of(item)
            if site and report.section_kinds[item.section] != "history":
                report.topics.add(site)
        for found in report.categories.values():
            for item, _ in found:
                self._place(report, item)
        return report

    @staticmethod
    def _place(report: _Report, item: _Item) -> None:
        item.clause = bisect.bisect_right(report.clause_starts, item.start) - 1
        item.sentence = bisect.bisect_right(report.sentence_starts, item.start) - 1
        item.section = bisect.bisect_right(report.section_starts, item.start) - 1

    # ------------------------------------------------------------------ status

    @staticmethod
    def _status(report: _Report, target: _Item) -> _Status:
        """Negation and uncertainty: the nearest cue of each kind in the clause ("pre" cues
        before the target, "post" cues after it within reach; the one before wins a tie);
        history: the first history cue that applies."""
        known = report.statuses.get(id(target))
        if known is not None:
            return known
        status = _Status()
        report.statuses[id(target)] = status
        cues = report.clause(target.clause).cues
        for kind, pre, post in (
            ("negated", Role.NEGATION_PRE, Role.NEGATION_POST),
            ("uncertain", Role.UNCERTAINTY_PRE, Role.UNCERTAINTY_POST),
        ):
            found = cues[pre].last_ending_by(target.start)
            after = cues[post].first_starting_from(target.end)
            reach = after.start - target.end if after is not None else POST_CUE_REACH + 1
            if reach <= POST_CUE_REACH and (found is None or reach < target.start - found.end):
                found = after
            if found is not None:
                setattr(status, kind, found.text)
        history = cues[Role.HISTORY_PRE].items[:1]
        if history and history[0].end <= target.start:
            status.history = history[0].text
        else:
            after = cues[Role.HISTORY_POST].first_starting_from(target.end)
            if after is not None and after.start - target.end <= POST_CUE_REACH:
                status.history = after.text
        if status.negated:  # "no suspicious mass", "possible mass ... resolved"
            status.uncertain = None
        return status

    # ------------------------------------------------------------------ labels

    def _label(self, report: _Report, task: TaskDefinition, report_type: str) -> TaskLabel:
        name = task.name
        evidence: list[_Evidence] = []
        history_mentions = 0
        known_cancer = False
        conclusion = [k == "conclusion" for k in report.section_kinds]
        excluded = _Sorted(
            item
            for item in report.items
            if Role.EXCLUDE in item.roles
            and any(m.role is Role.EXCLUDE and m.task == name for m in item.meanings)
        )

        for item in report.items:
            if report.section_kinds[item.section] == "history":
                if self._mentions(item, name):
                    history_mentions += 1
                continue
            for meaning in item.meanings if Role.SITE in item.roles else ():
                if meaning.role is Role.SITE and meaning.task == name:
                    if _inside(item, excluded):
                        continue
                    if self._status(report, item).history:
                        history_mentions += 1
                        continue
                    evidence.append(
                        _Evidence(
                            0,
                            CONFIDENCE_SITE_ONLY,
                            f"site only: '{item.text}'",
                            item,
                            conclusion[item.section],
                            is_site_only=True,
                        )
                    )
            if Role.CONCEPT not in item.roles:
                continue
            concept = self._concept(report, item, name, excluded)
            if concept is None:
                continue
            value, confidence, how = concept
            status = self._status(report, item)
            if status.history:
                history_mentions += 1
                known_cancer = known_cancer or (value == 1 and not status.negated)
                continue
            implied, cue = _implied(value, status)
            evidence.append(
                _Evidence(
                    implied,
                    confidence,
                    f"{cue}{how}",
                    item,
                    conclusion[item.section],
                    concept=value,
                )
            )

        for item, raw in report.categories.get(name, []):
            if report.section_kinds[item.section] == "history":
                continue
            status = self._status(report, item)
            if status.history:
                continue
            category_value = task.category.classes.get(raw) if task.category else None
            if category_value is None:
                category_value = task.category.classes.get(raw[:1]) if task.category else None
            if status.negated or category_value is None:
                evidence.append(
                    _Evidence(
                        0,
                        CONFIDENCE_SITE_ONLY,
                        f"negated category '{item.text}'",
                        item,
                        conclusion[item.section],
                        is_site_only=True,
                    )
                )
                continue
            system = task.category.system if task.category else "category"
            evidence.append(
                _Evidence(
                    category_value,
                    CONFIDENCE_CATEGORY,
                    f"category {system} {raw.upper()}",
                    item,
                    conclusion[item.section],
                    category=raw.upper(),
                )
            )

        if known_cancer:
            evidence = [_residual(e) for e in evidence]
        return self._decide(report, task, evidence, history_mentions, report_type)

    def _mentions(self, item: _Item, task: str) -> bool:
        return any(m.task == task and m.role in (Role.SITE, Role.CONCEPT) for m in item.meanings)

    def _concept(
        self, report: _Report, item: _Item, task: str, excluded: _Sorted
    ) -> tuple[int, float, str] | None:
        """The class ``item`` gives ``task``, its confidence and how it was attached."""
        specific = [m for m in item.meanings if m.role is Role.CONCEPT and m.task == task]
        fuzzy, original = report.corrected.score(item.start, item.end)
        scale = fuzzy / 100
        note = f" (fuzzy '{original}' {fuzzy:.0f})" if original else ""
        if specific:
            value = max(
                (m.value for m in specific if m.value is not None), key=_PRIORITY.__getitem__
            )
            return value, CONFIDENCE_SPECIFIC * scale, f"phrase '{item.text}'{note}"
        coordinated = self._coordinated(report, item, task)
        if coordinated is not None:
            return coordinated, CONFIDENCE_SAME_CLAUSE * scale, f"phrase '{item.text}' shared{note}"
        generic = [m for m in item.meanings if m.role is Role.CONCEPT and m.task is None]
        if not generic or any(m.role is Role.CONCEPT and m.task is not None for m in item.meanings):
            return None
        if _inside(item, excluded):
            return None
        attached = self._attach(report, item, task)
        if attached is None:
            return None
        confidence, where = attached
        value = _highest(m.value for m in generic if m.value is not None)
        return value, confidence * scale, f"generic '{item.text}' {where}{note}"

    @staticmethod
    def _coordinated(report: _Report, item: _Item, task: str) -> int | None:
        """The class of another organ's phrase shared by ``task``'s organ named just before
        it ("hepatic and pulmonary metastases", 肝、肺转移)."""
        values = [m.value for m in item.meanings if m.role is Role.CONCEPT and m.task]
        if not values:
            return None
        index = report.position[id(item)]
        end = item.start
        for number in range(index - 1, -1, -1):
            previous = report.items[number]
            if previous.clause != item.clause or not _CONJUNCTION.fullmatch(
                report.corrected.text[previous.end : end]
            ):
                return None
            if _site_of(previous) == task:
                return _highest(v for v in values if v is not None)
            if _site_of(previous) is None:
                return None
            end = previous.start
        return None

    def _attach(self, report: _Report, item: _Item, task: str) -> tuple[float, str] | None:
        """Whether a generic concept is about ``task``'s organ, and how sure that is."""
        clause = report.clause(item.clause)
        # "liver lesion, suspicious for metastasis": an organ-specific phrase names the
        # organ when no organ word stands alone in the clause
        if clause.has_site or clause.naming - (1 if _site_of(item, concepts=True) else 0):
            site = self._site_in_clause(clause, item, task)
            if site is None:
                return None
            return CONFIDENCE_SAME_CLAUSE, f"with '{site.text}' in its clause"
        # no organ in the clause: the nearest earlier clause naming one, in the sentence,
        # then in the section
        previous = report.named_before(item.clause)
        if previous is not None and previous.section == item.section:
            owner = self._owner(report, previous.clause, task)
            if owner is None:
                return None
            if owner.sentence == item.sentence:
                return CONFIDENCE_SAME_SENTENCE, f"with '{owner.text}' earlier in the sentence"
            return CONFIDENCE_SAME_SECTION, f"with '{owner.text}' earlier in the section"
        if report.topics == {task}:
            return CONFIDENCE_REPORT_TOPIC, "as the report's only organ"
        return None

    @staticmethod
    def _site_in_clause(clause: _ClauseIndex, item: _Item, task: str) -> _Item | None:
        """The first (in text order) phrase of the clause naming ``task``'s organ with no
        other organ between it and ``item``."""
        named, others = clause.named(task), clause.other_sites
        # before the item: those ending after the last other organ that starts before it
        blocked = bisect.bisect_left(others.starts, item.start) - 1
        first = bisect.bisect_right(named.ends, others.starts[blocked] if blocked >= 0 else -1)
        if first < len(named.items) and named.items[first].end <= item.start:
            return named.items[first]
        # then the item itself (when it names the organ), then the first one after it: any
        # later one has all that is between these and more
        for number in range(bisect.bisect_right(named.ends, item.start), len(named.items)):
            site = named.items[number]
            if site is item:
                if clause.has_site and not others.any_starting_in(item.start, item.end):
                    return site
                continue
            return None if others.any_starting_in(item.end, site.start) else site
        return None

    @staticmethod
    def _owner(report: _Report, clause: int, task: str) -> _Item | None:
        """The first item of ``clause`` that names ``task``'s organ among those naming one."""
        key = (clause, task)
        if key not in report.owners:
            report.owners[key] = next(
                (
                    i
                    for i in report.by_clause[clause]
                    if _site_of(i, concepts=True) is not None and task in _sites_of(i)
                ),
                None,
            )
        return report.owners[key]

    def _decide(
        self,
        report: _Report,
        task: TaskDefinition,
        evidence: list[_Evidence],
        history_mentions: int,
        report_type: str,
    ) -> TaskLabel:
        name = task.name
        if not evidence:
            if history_mentions:
                return TaskLabel(name, -1, CONFIDENCE_HISTORY_ONLY, "only in the history")
            return TaskLabel(name, -1, CONFIDENCE_NOT_ADDRESSED, "organ not mentioned")
        has_conclusion = "conclusion" in report.section_kinds
        chosen = [e for e in evidence if e.in_conclusion] or evidence
        from_conclusion = chosen[0].in_conclusion
        value = _highest(e.value for e in chosen)
        winners = sorted(
            (e for e in chosen if e.value == value),
            key=lambda e: (e.is_site_only, -_PRIORITY[e.concept], -e.confidence),
        )
        winner = winners[0]
        confidence = winner.confidence
        rule = winner.rule
        if has_conclusion and not from_conclusion:
            confidence *= OUTSIDE_CONCLUSION
            rule += "; not in the conclusion"
        findings = [e for e in chosen if not e.is_site_only]
        if any(e.value != value and e.value != 0 for e in findings) or (
            value == 1 and any(e.value == 0 and "negated" in e.rule for e in findings)
        ):
            confidence *= CONFLICT
            rule += "; conflicting evidence"
        categories = [e.category for e in chosen if e.category]
        category = winner.category or (categories[0] if categories else None)
        if (
            value == 1
            and report_type == "radiology"
            and task.radiology_malignant_requires_category
            and not any(
                (c or "").lower() in task.radiology_malignant_requires_category for c in categories
            )
        ):
            value = 2
            rule += "; imaging alone is not malignant without " + "/".join(
                task.radiology_malignant_requires_category
            )
        item = winner.item
        start, end = report.corrected.original_span(item.start, item.end) if item else (None, None)
        return TaskLabel(
            task=name,
            value=value,
            confidence=round(confidence, 3),
            rule=rule,
            span_text=report.text[start:end] if start is not None else "",
            span_start=start,
            span_end=end,
            category=category,
            size_mm=_size(report, chosen),
        )


def _ends(text: str, match: re.Match[str]) -> bool:
    """Whether a break character ends a sentence: not the point of 3.2 cm."""
    if match.group() != ".":
        return True
    after = match.end()
    if after >= len(text) or text[after].isspace():
        return True
    before = match.start() - 1
    return not (before >= 0 and text[before].isdigit() and text[after].isdigit())


def _cjk_comma(text: str, position: int) -> bool:
    """A comma between Chinese characters separates clauses (an English one does not)."""
    return any(
        0 <= i < len(text) and "\u3400" <= text[i] <= "\u9fff" for i in (position - 1, position + 1)
    )


def _drop_specimen_concepts(report: _Report) -> None:
    """In pathology, "(右乳肿物)" names the specimen, not a finding: keep only its sites."""
    starts = [item.start for item in report.items]
    for match in _SPECIMEN.finditer(report.corrected.text):
        for number in range(bisect.bisect_left(starts, match.start()), len(starts)):
            item = report.items[number]
            if item.start >= match.end():
                break
            if item.end <= match.end():
                item.meanings = [m for m in item.meanings if m.role is not Role.CONCEPT]
                item.refresh()


def _residual(evidence: _Evidence) -> _Evidence:
    """After a known (treated) cancer of the organ, a plain mass there is the cancer."""
    if evidence.value == 2 and evidence.category is None and not evidence.rule.startswith("hedged"):
        return _Evidence(
            1,
            evidence.confidence * 0.9,
            evidence.rule + "; residual of a known cancer",
            evidence.item,
            evidence.in_conclusion,
        )
    return evidence


def _highest(values: Iterable[int]) -> int:
    """The class that wins inside one report: 1, then 2, then 0, then -1."""
    return max(values, key=_PRIORITY.__getitem__)


def _implied(value: int, status: _Status) -> tuple[int, str]:
    if value == 0:
        return 0, ""
    if status.negated:
        return 0, f"negated by '{status.negated}': "
    if status.uncertain:
        return 2, f"hedged by '{status.uncertain}': "
    return value, ""


def _site_of(item: _Item, *, concepts: bool = False) -> str | None:
    """The task whose organ ``item`` names; "" for an organ of no task; None if no organ.

    With ``concepts``, an organ-specific concept (胰腺癌) names its organ too.
    """
    return item.named if concepts else item.site


def _sites_of(item: _Item) -> set[str]:
    return {
        m.task for m in item.meanings if m.task is not None and m.role in (Role.SITE, Role.CONCEPT)
    }


def _inside(item: _Item, excluded: _Sorted) -> bool:
    """Whether ``item`` is, or lies inside, an excluded phrase (phrases do not overlap:
    only the last one starting at or before it can hold it)."""
    index = bisect.bisect_right(excluded.starts, item.start) - 1
    return index >= 0 and item.end <= excluded.ends[index]


def _size(report: _Report, evidence: list[_Evidence]) -> float | None:
    """The largest dimension (mm) stated in the sentences holding the evidence."""
    sentences = {e.item.sentence for e in evidence if e.item is not None}
    if not sentences:
        return None
    text = report.corrected.text
    starts = report.sentence_starts
    largest: float | None = None
    for index in sentences:
        end = starts[index + 1] if index + 1 < len(starts) else len(text)
        for match in _SIZE.finditer(text, starts[index], end):
            numbers = [float(g) for g in match.groups()[:3] if g]
            factor = 10.0 if match.group(4) in ("cm", "厘米") else 1.0
            size = max(numbers) * factor
            largest = size if largest is None else max(largest, size)
    return round(largest, 1) if largest is not None else None
