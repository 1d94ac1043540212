"""Counts of what the catalog holds (``pacsnode stats``, the dashboard, /metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from catalog.db import Database
from catalog.models import Patient, Series, Study


@dataclass(frozen=True)
class CatalogStats:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


def catalog_stats(db: Database) -> CatalogStats:
    """Count in one read transaction, so the figures are consistent with each other.

    Instances and bytes are summed from the per-study counters the writer keeps, which is
    much cheaper than counting the instance table of a large archive.
    """
    with db.read() as session:
        patients = session.scalar(select(func.count()).select_from(Patient)) or 0
        studies, instances, size = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Study.number_of_instances), 0),
                func.coalesce(func.sum(Study.total_bytes), 0),
            )
        ).one()
        series = session.scalar(select(func.count()).select_from(Series)) or 0
    return CatalogStats(patients, int(studies), series, int(instances), int(size))
