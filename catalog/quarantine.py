"""Instances held back from the index until someone reviews them (burned-in policy).

A quarantined instance is stored (de-identified, durable) and has a row in
``deid_quarantine`` only: it is in none of the tables the archive's queries read.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from catalog.attributes import InstanceRecord
from catalog.audit import record_audit
from catalog.db import Database
from catalog.models import QuarantinedInstance, utcnow

if TYPE_CHECKING:
    from catalog.writer import StoredBlob


class QuarantineOutcome(enum.Enum):
    NEW = "new"
    SAME = "same"  # the same bytes were already held: the new copy is obsolete
    REPLACED = "replaced"  # different bytes under the same UID: the older copy is obsolete


@dataclass(frozen=True)
class QuarantineResult:
    outcome: QuarantineOutcome
    obsolete_blob_key: str | None = None


@dataclass(frozen=True)
class Held:
    """One quarantined instance, as the review commands list it (no PHI: stored UIDs)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    modality: str | None
    reason: str
    method: str | None
    blob_key: str
    sha256: str
    size: int
    received_at: str
    projects: tuple[str, ...] = ()
    new_study_projects: tuple[str, ...] = ()


def hold(
    db: Database,
    record: InstanceRecord,
    blob: StoredBlob,
    *,
    reason: str,
    door: str,
    aet: str | None,
    content_sha256: str | None = None,
) -> QuarantineResult:
    """Record ``record`` (stored as ``blob``) as quarantined; one transaction."""
    values = {
        "sop_instance_uid": record.instance.sop_instance_uid,
        "sop_class_uid": record.instance.sop_class_uid,
        "study_instance_uid": record.study.study_instance_uid,
        "modality": record.series.modality,
        "reason": reason[:256],
        "deid_method": record.instance.deid_method,
        "blob_key": blob.key,
        "sha256": blob.sha256,
        "content_sha256": content_sha256,
        "projects": json.dumps([record.projects, record.new_study_projects]),
        "size": blob.size,
        "source_door": door,
        "source_aet": aet,
        "received_at": utcnow(),
    }
    with db.write() as session:
        connection = session.connection()
        dialect_insert = sqlite_insert if connection.dialect.name == "sqlite" else pg_insert
        inserted = connection.execute(
            dialect_insert(QuarantinedInstance)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(QuarantinedInstance.id)
        ).scalar_one_or_none()
        if inserted is not None:
            return QuarantineResult(QuarantineOutcome.NEW)
        existing = connection.execute(
            select(
                QuarantinedInstance.blob_key,
                QuarantinedInstance.sha256,
                QuarantinedInstance.content_sha256,
            )
            .where(QuarantinedInstance.sop_instance_uid == values["sop_instance_uid"])
            .with_for_update()
        ).one()
        same_content = content_sha256 is not None and existing.content_sha256 == content_sha256
        if existing.sha256 == blob.sha256 or same_content:
            return QuarantineResult(QuarantineOutcome.SAME, obsolete_blob_key=blob.key)
        connection.execute(
            update(QuarantinedInstance)
            .where(QuarantinedInstance.sop_instance_uid == values["sop_instance_uid"])
            .values(**values)
        )
        return QuarantineResult(QuarantineOutcome.REPLACED, obsolete_blob_key=existing.blob_key)


def held(db: Database) -> list[Held]:
    """Every quarantined instance, oldest first."""
    with db.read() as session:
        rows = session.scalars(select(QuarantinedInstance).order_by(QuarantinedInstance.id)).all()
        return [_held(r) for r in rows]


def quarantine_summary(db: Database, newest: int) -> tuple[int, list[Held]]:
    """How many instances are quarantined, and the ``newest`` latest held, newest first."""
    with db.read() as session:
        count = session.scalar(select(func.count()).select_from(QuarantinedInstance)) or 0
        rows = session.scalars(
            select(QuarantinedInstance).order_by(QuarantinedInstance.id.desc()).limit(newest)
        ).all()
        return count, [_held(r) for r in rows]


def released(connection: Connection, sop_instance_uid: str, actor: str) -> None:
    """Drop the quarantine row of an instance ``actor`` released, and audit it, in the
    transaction that indexes it (:meth:`catalog.CatalogWriter.index`)."""
    _forget(connection, sop_instance_uid)
    record_audit(connection, actor, "quarantine_release", sop_instance_uid)


def discarded(db: Database, sop_instance_uid: str, actor: str) -> None:
    """Drop the quarantine row of an instance ``actor`` discarded (before its blob goes),
    and audit it; one transaction."""
    with db.write() as session:
        connection = session.connection()
        _forget(connection, sop_instance_uid)
        record_audit(connection, actor, "quarantine_discard", sop_instance_uid)


def _forget(connection: Connection, sop_instance_uid: str) -> None:
    connection.execute(
        delete(QuarantinedInstance).where(QuarantinedInstance.sop_instance_uid == sop_instance_uid)
    )


def find_held(db: Database, sop_instance_uid: str) -> Held | None:
    """The quarantined instance with this (stored) SOP Instance UID, if any."""
    with db.read() as session:
        row = session.scalars(
            select(QuarantinedInstance).where(
                QuarantinedInstance.sop_instance_uid == sop_instance_uid
            )
        ).one_or_none()
        return _held(row) if row is not None else None


def _held(r: QuarantinedInstance) -> Held:
    return Held(
        r.sop_instance_uid,
        r.sop_class_uid,
        r.study_instance_uid,
        r.modality,
        r.reason,
        r.deid_method,
        r.blob_key,
        r.sha256,
        r.size,
        r.received_at.isoformat(),
        *_projects(r.projects),
    )


def _projects(stored: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The project lists of a quarantine row (none for rows held before projects existed:
    the study then joins the default project if its release creates it)."""
    if not stored:
        return (), ()
    projects, new_study_projects = json.loads(stored)
    return tuple(projects), tuple(new_study_projects)
