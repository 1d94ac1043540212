"""The audit trail of cohorts and exports (who defined, froze or exported what, when)."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from catalog.models import AuditEvent, utcnow


def record(session: Session, actor: str, action: str, target: str, outcome: str = "ok") -> None:
    """Add one audit event in the caller's transaction (it commits with what it records).

    ``target`` names a cohort (``cohort:NAME@VERSION``) or an export run, never patient data;
    the run's figures are in the ``export_run`` table.
    """
    session.execute(
        insert(AuditEvent),
        {
            "at": utcnow(),
            "actor": actor[:256],
            "action": action,
            "target": target[:128],
            "outcome": outcome[:32],
        },
    )
