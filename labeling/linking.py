"""Linking reports to studies, whichever arrives first.

All matching happens on pseudonyms: the report's accession number and patient ID went
through the same keyed HMAC as the images', and its exam date was shifted by the same
per-patient offset, so no original is needed.

1. ``accession``: the study with the report's pseudo accession number (confidence 1.0, or
   0.7 when the study belongs to another pseudo patient).
2. ``patient_date``: radiology reports without such a study link to the same patient's study
   nearest the exam date within ``link_window_days`` whose modalities include the report's
   (0.9, minus 0.1 per day apart; x0.9 when the report names no modality; 0.5 on a tie).
3. ``pathology_prior``: pathology reports link to the patient's nearest imaging study on or
   before the specimen date within ``pathology_window_days`` (0.85, minus 0.005 per day).

Links of kinds 2 and 3 are guesses: they are recomputed when a better study arrives, and
dropped once the report's accession study arrives.

A report has no projects of its own: it belongs to the projects of the studies it is linked
to (:func:`linked_in_projects`), whichever door it came through, and is visible to a caller
scoped to projects only through such a study (an unlinked report only to callers who see
every project).

A placeholder accession number (``0``, ``000``, ``N/A``, ``UNKNOWN``, empty: see
:mod:`deid.placeholders`) never links: unrelated exams share it. A report's is dropped at
intake (:func:`accession_key`, where the original is known); a study's arrives as a
pseudonym, so the pseudonyms of the common placeholders (:func:`placeholder_keys`) are
never a linking key either, on either side (also for reports stored before).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, delete, exists, select
from sqlalchemy.orm import Session

from catalog.models import Patient, Report, ReportLink, Study
from catalog.projects import in_projects
from config.labeling import LabelingSettings
from deid.placeholders import common_placeholders, is_placeholder

ACCESSION = "accession"
PATIENT_DATE = "patient_date"
PATHOLOGY_PRIOR = "pathology_prior"

_MODALITY_ALIASES = {"MRI": "MR", "CTA": "CT", "PET": "PT", "PET-CT": "PT", "MAMMO": "MG"}


@dataclass(frozen=True)
class Candidate:
    study_pk: int
    method: str
    confidence: float
    days_apart: int | None


def linked_in_projects(report_pk: object, projects: frozenset[str]) -> ColumnElement[bool]:
    """Whether the report ``report_pk`` (a column or value) is linked to a study of one of
    ``projects``: whether a caller of those projects sees it."""
    return exists().where(
        ReportLink.report_pk == report_pk, in_projects(ReportLink.study_pk, projects)
    )


def accession_key(original: str | None) -> str:
    """The original accession number as a linking key: stripped, and empty for a
    placeholder (``0``, ``N/A``, ``UNKNOWN``, ...), which identifies no exam."""
    value = (original or "").strip()
    return "" if is_placeholder(value) else value


def placeholder_keys(
    pseudonym_of: Callable[[str, str], str], issuers: Iterable[str]
) -> frozenset[str]:
    """The pseudo accession numbers of the common placeholders under each issuer: keys
    that studies (and reports stored before placeholders were dropped) may carry, and that
    must link nothing."""
    return frozenset(
        pseudonym_of(value, issuer) for issuer in set(issuers) for value in common_placeholders()
    )


def _day(value: str | None) -> date | None:
    if not value or len(value) != 8 or not value.isdigit():
        return None
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        return None


def _modality(value: str | None) -> str:
    upper = (value or "").strip().upper()
    return _MODALITY_ALIASES.get(upper, upper)


def best_links(
    session: Session,
    report: Report,
    settings: LabelingSettings,
    ignored_accessions: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """The links ``report`` should have now (empty while its study has not arrived).
    ``ignored_accessions`` are pseudo accession numbers that link nothing (placeholders)."""
    if report.accession_number and report.accession_number not in ignored_accessions:
        rows = session.execute(
            select(Study.id, Study.study_date, Patient.patient_id)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Study.accession_number == report.accession_number)
        ).all()
        if rows:
            exam = _day(report.exam_date)
            return [
                Candidate(
                    study_pk,
                    ACCESSION,
                    1.0 if patient_id == report.patient_id else 0.7,
                    _days(exam, _day(study_date)),
                )
                for study_pk, study_date, patient_id in rows
            ]
    exam = _day(report.exam_date)
    if exam is None:
        return []
    studies = session.execute(
        select(Study.id, Study.study_date, Study.modalities_in_study)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Patient.patient_id == report.patient_id)
    ).all()
    if report.report_type == "pathology":
        return _nearest_prior(studies, exam, settings.pathology_window_days)
    return _nearest_same_modality(studies, exam, report.modality, settings.link_window_days)


def _days(first: date | None, second: date | None) -> int | None:
    return None if first is None or second is None else (first - second).days


def _nearest_same_modality(
    studies: Sequence[tuple[int, str | None, str]], exam: date, modality: str | None, window: int
) -> list[Candidate]:
    wanted = _modality(modality)
    scored: list[tuple[int, int]] = []
    for study_pk, study_date, modalities in studies:
        day = _day(study_date)
        if day is None or abs((day - exam).days) > window:
            continue
        if wanted and wanted not in {_modality(m) for m in (modalities or "").split("\\")}:
            continue
        scored.append((abs((day - exam).days), study_pk))
    if not scored:
        return []
    scored.sort()
    days, study_pk = scored[0]
    confidence = max(0.5, 0.9 - 0.1 * days) * (1.0 if wanted else 0.9)
    if len(scored) > 1 and scored[1][0] == days:
        confidence = 0.5  # two studies equally near: a person should check
    return [Candidate(study_pk, PATIENT_DATE, round(confidence, 3), days)]


def _nearest_prior(
    studies: Sequence[tuple[int, str | None, str]], specimen: date, window: int
) -> list[Candidate]:
    scored = []
    for study_pk, study_date, _ in studies:
        day = _day(study_date)
        if day is not None and 0 <= (specimen - day).days <= window:
            scored.append(((specimen - day).days, study_pk))
    if not scored:
        return []
    days, study_pk = min(scored)
    confidence = max(0.4, 0.85 - 0.005 * days)
    return [Candidate(study_pk, PATHOLOGY_PRIOR, round(confidence, 3), days)]


def relink(
    session: Session,
    report: Report,
    settings: LabelingSettings,
    ignored_accessions: frozenset[str] = frozenset(),
) -> set[int]:
    """Make ``report``'s links what :func:`best_links` says; the studies whose links changed."""
    wanted = {c.study_pk: c for c in best_links(session, report, settings, ignored_accessions)}
    current = {
        link.study_pk: link
        for link in session.scalars(select(ReportLink).where(ReportLink.report_pk == report.id))
    }
    changed: set[int] = set()
    stale = [pk for pk, link in current.items() if pk not in wanted]
    if stale:
        session.execute(
            delete(ReportLink).where(
                ReportLink.report_pk == report.id, ReportLink.study_pk.in_(stale)
            )
        )
        changed.update(stale)
    for study_pk, candidate in wanted.items():
        link = current.get(study_pk)
        if link is None:
            session.add(
                ReportLink(
                    report_pk=report.id,
                    study_pk=study_pk,
                    method=candidate.method,
                    confidence=candidate.confidence,
                    days_apart=candidate.days_apart,
                )
            )
            changed.add(study_pk)
        elif (link.method, link.confidence) != (candidate.method, candidate.confidence):
            link.method, link.confidence = candidate.method, candidate.confidence
            link.days_apart = candidate.days_apart
            changed.add(study_pk)
    session.flush()
    return changed


def reports_for_study(
    session: Session, study_pk: int, ignored_accessions: frozenset[str] = frozenset()
) -> list[Report]:
    """Reports that may belong to a study that just arrived: same pseudo accession number
    (unless it is one of ``ignored_accessions``), or the same pseudo patient (whose nearest
    study may now be this one)."""
    row = session.execute(
        select(Study.accession_number, Patient.patient_id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Study.id == study_pk)
    ).one_or_none()
    if row is None:
        return []
    accession, patient_id = row
    query = select(Report).where(Report.patient_id == patient_id)
    if accession and accession not in ignored_accessions:
        query = select(Report).where(
            (Report.patient_id == patient_id) | (Report.accession_number == accession)
        )
    return list(session.scalars(query.order_by(Report.id)))
