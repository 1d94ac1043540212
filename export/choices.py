"""What a cohort form can offer: the label tasks and their classes, the sequence families,
the modalities and body parts among a caller's series (with counts), and the defaults a
saved definition receives.

The counts are one ``GROUP BY`` each in the database, over the studies of the caller's
projects, as the cohort's own selection sees them (series with at least one instance).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from catalog.models import Series
from catalog.projects import in_projects
from export.cohorts import Cohorts

GROUPINGS = ("sex", "modality", "sequence", "body_part")
"""What balancing and splits group by, besides ``label:<task>``."""


def form_choices(cohorts: Cohorts, projects: frozenset[str] | None) -> dict[str, Any]:
    """The choices of a cohort form for a caller of ``projects`` (``None``: every project)."""
    tasks = cohorts.labels.tasks()
    settings = cohorts.settings
    with cohorts.db.read() as session:
        modalities = _counts(session, func.upper(Series.modality), projects)
        body_parts = _counts(session, func.upper(Series.body_part_examined), projects)
    return {
        "tasks": [
            {
                "name": task.name,
                "description": task.description,
                "classes": [{"value": c.value, "meaning": c.meaning} for c in task.classes],
            }
            for _, task in sorted(tasks.items())
        ],
        "sequences": list(cohorts.matcher.names),
        "modalities": modalities,
        "body_parts": body_parts,
        "sexes": ["M", "F", "O"],
        "groupings": [*GROUPINGS, *(f"label:{name}" for name in sorted(tasks))],
        "default_split": dict(settings.default_split),
        "default_seed": settings.default_seed,
    }


def _counts(
    session: Session, value: ColumnElement[str | None], projects: frozenset[str] | None
) -> dict[str, int]:
    """Series per ``value`` (values none has left out), among the studies of ``projects``."""
    query = (
        select(value, func.count())
        .select_from(Series)
        .where(Series.number_of_instances > 0, value.is_not(None), value != "")
        .group_by(value)
        .order_by(value)
    )
    if projects is not None:
        query = query.where(in_projects(Series.study_pk, projects))
    return {str(name): int(count) for name, count in session.execute(query)}
