"""``GET /api/system``: the node's state for the System page and for scripts (``system.read``).

CPU, memory, the data folder's disk, DIMSE associations, ingest counts and rates, scheduled
jobs and the alerts in effect are node-wide and hold no data of the archive. Two parts are
added for the callers who may see them:

- ``quarantine`` (count and newest held instances), for callers who see every project: a
  held instance is in no project's index yet;
- ``audit`` (the newest events), for callers with ``admin.audit``, scoped to their projects
  as ``GET /api/audit`` is.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from access import Permission, Principal
from api.audit import event_json
from api.security import require
from catalog import Database
from catalog.audit import AuditFilter, read_audit
from catalog.quarantine import quarantine_summary

NEWEST = 10
"""Quarantined instances and audit events shown."""


class NodeState(Protocol):
    """The node-wide part of the answer (``node.monitor.SystemMonitor``)."""

    def snapshot(self) -> dict[str, Any]: ...


def system_router(state: NodeState, db: Database) -> APIRouter:
    router = APIRouter(tags=["system"])

    @router.get("/system")
    async def system(
        principal: Annotated[Principal, Depends(require(Permission.SYSTEM))],
    ) -> dict[str, Any]:
        """The node now: ``cpu``, ``memory``, ``disk`` (of the data folder, with the alert
        threshold), ``associations``, ``ingest`` (instances accepted, rejected and failed
        since the start and over the last ``window_seconds``, per minute, and a 30-minute
        ``history``), ``jobs`` with their last runs, ``alerts``; ``quarantine`` and
        ``audit`` for the callers who may see them."""

        def read() -> dict[str, Any]:
            answer = state.snapshot()
            if principal.projects is None:
                count, newest = quarantine_summary(db, NEWEST)
                answer["quarantine"] = {
                    "count": count,
                    "newest": [
                        {
                            "sop_instance_uid": held.sop_instance_uid,
                            "study_instance_uid": held.study_instance_uid,
                            "modality": held.modality,
                            "reason": held.reason,
                            "size": held.size,
                            "received_at": held.received_at,
                        }
                        for held in newest
                    ],
                }
            if principal.allows(Permission.AUDIT):
                with db.read() as session:
                    events = read_audit(
                        session, AuditFilter(projects=principal.projects), limit=NEWEST
                    )
                answer["audit"] = [event_json(event) for event in events]
            return answer

        return await run_in_threadpool(read)

    return router
