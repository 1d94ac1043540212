"""Report labels, study labels derived from them, and people's reviews of both.

A study's label for a task comes from its linked reports: the first report type in the
task's ``precedence`` (pathology, then radiology) that addresses the organ decides; within it
the highest class wins (1, then 2, then 0). The label goes to the review list when its
confidence is below the task's ``review_below`` or when the reports disagree (reports of the
deciding type with different classes, or a lower-precedence report calling malignant what
the deciding one calls 0). A person's decision (confirm or override) is kept in its own
columns, which re-extraction and re-linking never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.models import Label, Report, ReportLabel, ReportLink
from labeling.extract import TaskLabel
from labeling.tasks import CLASSES, TaskSet

_PRIORITY = {1: 3, 2: 2, 0: 1, -1: 0}


class ReviewError(ValueError):
    """A review cannot be applied (unknown label, invalid class, no reviewer)."""


def store_report_labels(
    session: Session, report: Report, labels: Iterable[TaskLabel], tasks: TaskSet
) -> None:
    """Insert or update ``report``'s labels; review columns are left as they are."""
    existing = {
        label.task: label
        for label in session.scalars(select(ReportLabel).where(ReportLabel.report_pk == report.id))
    }
    now = datetime.now(UTC)
    for extracted in labels:
        task = tasks.tasks.get(extracted.task)
        if task is None:
            continue
        row = existing.get(extracted.task)
        if row is None:
            row = ReportLabel(report_pk=report.id, task=extracted.task, review_status="auto")
            session.add(row)
        row.value = extracted.value
        row.confidence = extracted.confidence
        row.rule = extracted.rule
        row.span_text = extracted.span_text
        row.span_start = extracted.span_start
        row.span_end = extracted.span_end
        row.category = extracted.category
        row.size_mm = extracted.size_mm
        row.needs_review = (
            row.review_status == "auto"
            and extracted.value != -1
            and extracted.confidence < task.review_below
        )
        row.updated_at = now
    session.flush()


@dataclass(frozen=True)
class _Vote:
    report_pk: int
    report_type: str
    value: int
    confidence: float
    label: ReportLabel


def refresh_study_labels(session: Session, study_pk: int, tasks: TaskSet) -> None:
    """Derive ``study_pk``'s labels from its linked reports (keeping review decisions)."""
    rows = session.execute(
        select(Report.id, Report.report_type, ReportLink.confidence, ReportLabel)
        .join(ReportLink, ReportLink.report_pk == Report.id)
        .join(ReportLabel, ReportLabel.report_pk == Report.id)
        .where(ReportLink.study_pk == study_pk)
    ).all()
    existing = {
        label.task: label
        for label in session.scalars(select(Label).where(Label.study_pk == study_pk))
    }
    now = datetime.now(UTC)
    for name, task in tasks.tasks.items():
        votes = [
            _Vote(pk, kind, label.effective_value, label.confidence * link_confidence, label)
            for pk, kind, link_confidence, label in rows
            if label.task == name
        ]
        row = existing.get(name)
        if not votes:
            if row is not None and row.review_status == "auto":
                session.delete(row)  # no report links here any more
            continue
        value, decider, reason = _decide(votes, task.precedence)
        if row is None:
            row = Label(study_pk=study_pk, task=name, review_status="auto")
            session.add(row)
        confidence = decider.confidence * (0.8 if reason else 1.0)
        row.value = value
        row.confidence = round(confidence, 3)
        row.report_pk = decider.report_pk
        row.rule = f"{decider.report_type} report {decider.report_pk}: {decider.label.rule}"
        row.span_text = decider.label.span_text
        row.category = decider.label.category
        row.size_mm = decider.label.size_mm
        if not reason and value != -1 and confidence < task.review_below:
            reason = f"confidence {confidence:.2f} below {task.review_below:.2f}"
        row.needs_review = bool(reason) and row.review_status == "auto"
        row.review_reason = reason or None
        row.rules_version = tasks.version
        row.updated_at = now
    session.flush()


def _decide(votes: list[_Vote], precedence: tuple[str, ...]) -> tuple[int, _Vote, str]:
    """The study's class, the vote that decided it, and why it needs review ("" if not)."""
    addressed = [v for v in votes if v.value != -1]
    if not addressed:
        best = max(votes, key=lambda v: v.confidence)
        return -1, best, ""
    order = {kind: rank for rank, kind in enumerate(precedence)}
    top_rank = min(order.get(v.report_type, len(order)) for v in addressed)
    deciding = [v for v in addressed if order.get(v.report_type, len(order)) == top_rank]
    value = max((v.value for v in deciding), key=_PRIORITY.__getitem__)
    decider = max((v for v in deciding if v.value == value), key=lambda v: v.confidence)
    reason = ""
    if len({v.value for v in deciding}) > 1:
        classes = ", ".join(str(c) for c in sorted({v.value for v in deciding}))
        reason = f"{decider.report_type} reports disagree ({classes})"
    elif value == 0 and any(v.value == 1 for v in addressed if v not in deciding):
        reason = f"{decider.report_type} says 0 where another report says 1"
    return value, decider, reason


def apply_review(
    row: Label | ReportLabel, *, reviewer: str, value: int | None, note: str | None
) -> None:
    """Confirm (``value`` None: keep the class in force) or override a label."""
    if not reviewer.strip():
        raise ReviewError("a review needs the reviewer's name")
    if value is not None and value not in CLASSES:
        raise ReviewError(f"class must be one of {', '.join(map(str, CLASSES))}")
    if value is None:
        row.override_value = row.effective_value
        row.review_status = "confirmed"
    else:
        row.override_value = value
        row.review_status = "overridden" if value != row.value else "confirmed"
    row.reviewed_by = reviewer.strip()[:128]
    row.reviewed_at = datetime.now(UTC)
    row.review_note = note
    row.needs_review = False
