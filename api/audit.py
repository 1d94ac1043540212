"""``GET /api/audit``: the audit trail, filtered and paged, for callers with ``admin.audit``.

Newest first; ``before`` (an event id) pages back: each answer names the ``next`` value to
send, or null at the oldest event. A caller scoped to projects sees only the events of its
projects' studies (``catalog.audit.AuditFilter.projects``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from access import Permission, Principal
from api.security import require
from catalog import Database
from catalog.audit import AuditFilter, AuditRecord, as_utc, read_audit


def event_json(event: AuditRecord) -> dict[str, Any]:
    """One event as the API and ``pacsnode audit list --json`` show it."""
    return {
        "id": event.id,
        "at": as_utc(event.at).isoformat(),
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "door": event.door,
        "remote": event.remote,
        "target": event.target,
        "studies": list(event.studies),
        "detail": event.detail,
    }


def audit_router(db: Database) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.get("/audit")
    async def audit_events(
        principal: Annotated[Principal, Depends(require(Permission.AUDIT))],
        since: Annotated[datetime | None, Query(description="From this time (ISO 8601).")] = None,
        until: Annotated[datetime | None, Query(description="Before this time.")] = None,
        actor: Annotated[str | None, Query(max_length=256)] = None,
        action: Annotated[
            str | None, Query(max_length=64, description="e.g. query, store.")
        ] = None,
        outcome: Annotated[str | None, Query(max_length=32)] = None,
        door: Annotated[str | None, Query(max_length=16, description="dimse, http, cli...")] = None,
        study: Annotated[
            str | None, Query(max_length=64, description="A stored Study UID.")
        ] = None,
        before: Annotated[
            int | None, Query(ge=1, description="Page: events older than this id.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Audit events, newest first, every filter given applying."""
        if since is not None and until is not None and since >= until:
            raise HTTPException(400, "since must be before until")
        where = AuditFilter(
            since=since,
            until=until,
            actor=actor,
            action=action,
            outcome=outcome,
            door=door,
            study=study,
            before_id=before,
            projects=principal.projects,
        )

        def read() -> list[AuditRecord]:
            with db.read() as session:
                return read_audit(session, where, limit=limit + 1)

        events = await run_in_threadpool(read)
        page = events[:limit]
        return {
            "events": [event_json(event) for event in page],
            "next": page[-1].id if len(events) > limit else None,
        }

    return router
