"""What export needs from labeling: the label schema, and the labels of studies.

Labels are per study and task (a report describes an exam). The labeling room fills the
catalog's ``label`` table; :class:`LabelSource` is the narrow read interface cohorts use
(:class:`CatalogLabels` reads that table), so export depends on the catalog only and the
composition root hands it the task schema.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.models import Label, Study


@dataclass(frozen=True)
class LabelClass:
    """One class of a task: the value written in manifests (e.g. ``"1"``) and its meaning."""

    value: str
    meaning: str


@dataclass(frozen=True)
class LabelTask:
    """A classification task and its classes (what 0 and 1 mean)."""

    name: str
    classes: tuple[LabelClass, ...]
    description: str = ""

    def meaning(self, value: str) -> str:
        return next((c.meaning for c in self.classes if c.value == value), "")

    def has_class(self, value: str) -> bool:
        return any(c.value == value for c in self.classes)


@dataclass(frozen=True)
class StudyLabel:
    """The label of one study for one task, with its evidence and review state."""

    task: str
    value: str
    confidence: float | None = None
    reviewed: bool = False
    overridden: bool = False
    evidence: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


class LabelSource(Protocol):
    """Read access to labels for cohorts."""

    def tasks(self) -> Mapping[str, LabelTask]:
        """Every known task by name."""
        ...

    def study_labels(
        self, session: Session, study_uids: Collection[str], tasks: Collection[str]
    ) -> Mapping[str, Sequence[StudyLabel]]:
        """Labels of ``tasks`` for the (de-identified) Study Instance UIDs given.

        At most one label per study and task: the one in force (a reviewer's override wins).
        """
        ...


class NoLabels:
    """A node without labeling: no tasks, no labels (a label filter is an unknown task)."""

    def tasks(self) -> Mapping[str, LabelTask]:
        return {}

    def study_labels(
        self, session: Session, study_uids: Collection[str], tasks: Collection[str]
    ) -> Mapping[str, Sequence[StudyLabel]]:
        return {}


class CatalogLabels:
    """Study labels from the catalog's ``label`` table, which labeling derives from reports.

    The class in force is a reviewer's override, else the derived class; ``reviewed`` means a
    person confirmed or overrode it. The evidence is the matched phrase of the deciding
    report (de-identified text), the rule, and the reporting category when there is one.

    Parameters
    ----------
    tasks
        The label tasks and their classes (from labeling's task file).
    """

    def __init__(self, tasks: Mapping[str, LabelTask]) -> None:
        self._tasks = dict(tasks)

    def tasks(self) -> Mapping[str, LabelTask]:
        return self._tasks

    def study_labels(
        self, session: Session, study_uids: Collection[str], tasks: Collection[str]
    ) -> Mapping[str, Sequence[StudyLabel]]:
        query = (
            select(
                Study.study_instance_uid,
                Label.task,
                Label.value,
                Label.override_value,
                Label.confidence,
                Label.review_status,
                Label.rule,
                Label.span_text,
                Label.category,
                Label.report_pk,
            )
            .join(Study, Label.study_pk == Study.id)
            .where(Study.study_instance_uid.in_(list(study_uids)), Label.task.in_(list(tasks)))
        )
        found: dict[str, list[StudyLabel]] = defaultdict(list)
        for row in session.execute(query):
            value = row.override_value if row.override_value is not None else row.value
            found[row.study_instance_uid].append(
                StudyLabel(
                    task=row.task,
                    value=str(value),
                    confidence=row.confidence,
                    reviewed=row.review_status in ("confirmed", "overridden"),
                    overridden=row.review_status == "overridden",
                    evidence=_evidence(row.span_text, row.rule, row.category, row.report_pk),
                )
            )
        return found


def _evidence(span: str, rule: str, category: str | None, report_pk: int | None) -> str:
    parts = [f'"{span}"' if span else "", rule, category or ""]
    if report_pk is not None:
        parts.append(f"report {report_pk}")
    return "; ".join(part for part in parts if part)
