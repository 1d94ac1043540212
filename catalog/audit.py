"""The audit trail in the catalog: append events (in the caller's transaction or in batches),
and read them back filtered and paged.

``target`` is a pseudonym, a stored (de-identified) UID, a cohort (``cohort:NAME@VERSION``),
an export run, a token or user name: never an original identifier. ``studies`` are stored
Study Instance UIDs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.orm import Session

from catalog.models import AuditEvent, AuditEventStudy, AuditForwardCursor, Study, utcnow
from catalog.projects import in_projects


@dataclass(frozen=True)
class AuditRecord:
    """Who did what, when, from where, with which outcome, to which studies: an event as
    the catalog keeps it (``id``) and as it is sent on (A.5 XML, syslog).

    ``studies`` are stored (de-identified) Study Instance UIDs; ``target`` names anything
    else acted on (a cohort ``cohort:NAME@VERSION``, a token, a user, a route); ``detail``
    holds counts and the like. None of them ever holds an original identifier.
    """

    at: datetime
    actor: str
    action: str
    outcome: str
    door: str = "node"
    remote: str = ""
    target: str = ""
    studies: tuple[str, ...] = ()
    detail: dict[str, object] = field(default_factory=dict)
    id: int | None = None


def record_audit(
    db: Session | Connection,
    actor: str,
    action: str,
    target: str,
    outcome: str = "ok",
    *,
    door: str = "node",
    remote: str = "",
    studies: Iterable[str] = (),
) -> None:
    """Add one audit event in the caller's transaction (it commits with what it records)."""
    event = AuditRecord(utcnow(), actor, action, outcome, door, remote, target, tuple(studies))
    append_audit(db, [event])


def append_audit(db: Session | Connection, rows: Sequence[AuditRecord]) -> None:
    """Add events in the caller's transaction, one INSERT per event and one for its studies
    (their ``id`` is the catalog's)."""
    for row in rows:
        event_id = db.execute(
            insert(AuditEvent).returning(AuditEvent.id),
            {
                "at": row.at,
                "actor": row.actor[:256],
                "action": row.action[:64],
                "target": row.target[:128],
                "outcome": row.outcome[:32],
                "door": row.door[:16],
                "remote": row.remote[:128],
                "detail": json.dumps(row.detail, sort_keys=True) if row.detail else None,
            },
        ).scalar_one()
        studies = sorted({uid[:64] for uid in row.studies})
        if studies:
            db.execute(
                insert(AuditEventStudy),
                [{"event_id": event_id, "study_uid": uid} for uid in studies],
            )


@dataclass(frozen=True)
class AuditFilter:
    """What to read back: every condition given must hold."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    door: str | None = None
    study: str | None = None
    after_id: int | None = None
    """Only events with a larger id (paging forward, forwarding)."""
    before_id: int | None = None
    """Only events with a smaller id (paging back from the newest)."""
    projects: frozenset[str] | None = None
    """A reader scoped to projects sees only the events concerning a study of its projects,
    and of their studies only those (``None``: everything). Events about no study (logins,
    credentials, cohorts, associations) may name what belongs to other projects."""


def read_audit(
    session: Session, where: AuditFilter, *, limit: int, newest_first: bool = True
) -> list[AuditRecord]:
    """Events matching ``where``, at most ``limit``, newest (or oldest) first."""
    query = select(AuditEvent)
    if where.since is not None:
        query = query.where(AuditEvent.at >= as_utc(where.since))
    if where.until is not None:
        query = query.where(AuditEvent.at < as_utc(where.until))
    for column, value in (
        (AuditEvent.actor, where.actor),
        (AuditEvent.action, where.action),
        (AuditEvent.outcome, where.outcome),
        (AuditEvent.door, where.door),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.study is not None:
        query = query.where(
            AuditEvent.id.in_(
                select(AuditEventStudy.event_id).where(AuditEventStudy.study_uid == where.study)
            )
        )
    visible = None
    if where.projects is not None:
        visible = (
            select(AuditEventStudy.event_id, AuditEventStudy.study_uid)
            .join(Study, Study.study_instance_uid == AuditEventStudy.study_uid)
            .where(in_projects(Study.id, where.projects))
        )
        query = query.where(AuditEvent.id.in_(select(visible.subquery().c.event_id)))
    if where.after_id is not None:
        query = query.where(AuditEvent.id > where.after_id)
    if where.before_id is not None:
        query = query.where(AuditEvent.id < where.before_id)
    order = AuditEvent.id.desc() if newest_first else AuditEvent.id.asc()
    events = session.execute(query.order_by(order).limit(limit)).scalars().all()
    studies: dict[int, list[str]] = {}
    if events:
        listed = (
            visible
            if visible is not None
            else select(AuditEventStudy.event_id, AuditEventStudy.study_uid)
        )
        for event_id, uid in session.execute(
            listed.where(AuditEventStudy.event_id.in_([e.id for e in events]))
        ):
            studies.setdefault(event_id, []).append(uid)
    return [
        AuditRecord(
            id=e.id,
            at=e.at,
            actor=e.actor,
            action=e.action,
            target=e.target,
            outcome=e.outcome,
            door=e.door,
            remote=e.remote,
            studies=tuple(sorted(studies.get(e.id, ()))),
            detail=json.loads(e.detail) if e.detail else {},
        )
        for e in events
    ]


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, as the trail keeps times (a time without zone is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def forward_cursor(session: Session, name: str) -> int | None:
    """The id of the last event forwarder ``name`` sent (``None``: it never ran)."""
    cursor = session.get(AuditForwardCursor, name)
    return cursor.last_id if cursor is not None else None


def newest_audit_id(session: Session) -> int:
    return session.execute(select(func.coalesce(func.max(AuditEvent.id), 0))).scalar_one()


def move_forward_cursor(session: Session, name: str, last_id: int) -> None:
    cursor = session.get(AuditForwardCursor, name)
    if cursor is None:
        session.add(AuditForwardCursor(name=name, last_id=last_id))
    else:
        cursor.last_id = last_id
