"""Project membership of studies: the SQL condition every read of the archive adds for a
caller scoped to projects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists

from catalog.models import StudyProject


def in_projects(study_pk: Any, projects: frozenset[str]) -> ColumnElement[bool]:
    """Whether the study ``study_pk`` (a column or value) is in one of ``projects``."""
    return exists().where(
        StudyProject.study_pk == study_pk, StudyProject.project.in_(sorted(projects))
    )
