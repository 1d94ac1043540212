"""What the sync from a source (an Orthanc) has done: its cursor and the studies it fetched."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from catalog.db import Database
from catalog.models import SyncCursor, SyncedStudy, utcnow


class StudySyncStatus(enum.StrEnum):
    SYNCED = "synced"  # every instance accepted
    INCOMPLETE = "incomplete"  # some instances refused for good (invalid, de-identification)


@dataclass(frozen=True)
class SyncedStudyRecord:
    change_seq: int | None
    study_instance_uid: str | None
    instances: int
    rejected: int
    status: StudySyncStatus
    synced_at: datetime | None = None


def cursor(db: Database, source: str) -> int:
    """The last change of ``source`` fully processed (0 before the first sync)."""
    with db.read() as session:
        value = session.scalar(select(SyncCursor.last_change).where(SyncCursor.source == source))
    return int(value or 0)


def advance_cursor(db: Database, source: str, change: int) -> None:
    """Move the cursor forward to ``change`` (never backwards)."""
    with db.write() as session:
        _advance(session, source, change)


def reset_cursor(db: Database, source: str) -> None:
    """Follow ``source`` from its first change again (its change log was reset)."""
    with db.write() as session:
        session.execute(
            update(SyncCursor)
            .where(SyncCursor.source == source)
            .values(last_change=0, updated_at=utcnow())
        )


def record_study(db: Database, source: str, study: SyncedStudyRecord) -> None:
    """Record a fetched study and, when it came from the change feed, move the cursor past
    its change: both in one transaction, so a study is never counted without the cursor
    moving, nor the cursor moved past a study not recorded."""
    with db.write() as session:
        session.add(
            SyncedStudy(
                source=source,
                change_seq=study.change_seq,
                study_instance_uid=study.study_instance_uid,
                instances=study.instances,
                rejected=study.rejected,
                status=study.status,
                synced_at=utcnow(),
            )
        )
        if study.change_seq is not None:
            _advance(session, source, study.change_seq)


def synced_studies(db: Database, source: str) -> list[SyncedStudyRecord]:
    """Every study fetched from ``source``, oldest first."""
    with db.read() as session:
        rows = session.scalars(
            select(SyncedStudy).where(SyncedStudy.source == source).order_by(SyncedStudy.id)
        ).all()
        return [
            SyncedStudyRecord(
                change_seq=row.change_seq,
                study_instance_uid=row.study_instance_uid,
                instances=row.instances,
                rejected=row.rejected,
                status=StudySyncStatus(row.status),
                synced_at=row.synced_at,
            )
            for row in rows
        ]


def synced_study_count(db: Database, source: str) -> int:
    with db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(SyncedStudy).where(SyncedStudy.source == source)
            )
            or 0
        )


def _advance(session: Session, source: str, change: int) -> None:
    dialect_insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else pg_insert
    session.execute(
        dialect_insert(SyncCursor)
        .values(source=source, last_change=0, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["source"])
    )
    session.execute(
        update(SyncCursor)
        .where(SyncCursor.source == source, SyncCursor.last_change < change)
        .values(last_change=change, updated_at=utcnow())
    )
