"""Project membership of studies: the SQL condition every read of the archive adds for a
caller scoped to projects."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import ColumnElement, exists, select

from catalog.db import Database
from catalog.models import Patient, Series, Study, StudyPatient, StudyProject


def in_projects(study_pk: Any, projects: frozenset[str]) -> ColumnElement[bool]:
    """Whether the study ``study_pk`` (a column or value) is in one of ``projects``."""
    return exists().where(
        StudyProject.study_pk == study_pk, StudyProject.project.in_(sorted(projects))
    )


def pseudonym_in_projects(
    db: Database,
    kind: Literal["patient", "study", "series", "accession"],
    pseudonym: str,
    projects: frozenset[str],
) -> bool:
    """Whether a stored patient ID, study or series UID or accession number (as the vault
    keys them) belongs to a study of one of ``projects``: re-identification of anything
    else is refused to a caller of those projects as if the vault had nothing."""
    if kind == "patient":
        condition = exists().where(
            Patient.patient_id == pseudonym,
            StudyPatient.patient_pk == Patient.id,
            in_projects(StudyPatient.study_pk, projects),
        )
    elif kind == "series":
        condition = exists().where(
            Series.series_instance_uid == pseudonym, in_projects(Series.study_pk, projects)
        )
    else:
        column = Study.study_instance_uid if kind == "study" else Study.accession_number
        condition = exists().where(column == pseudonym, in_projects(Study.id, projects))
    with db.read() as session:
        return bool(session.scalar(select(condition)))
