"""The audit trail: who re-identified, reviewed, defined, froze or exported what, and when."""

from __future__ import annotations

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from catalog.models import AuditEvent, utcnow


def record_audit(
    db: Session | Connection, actor: str, action: str, target: str, outcome: str = "ok"
) -> None:
    """Add one audit event in the caller's transaction (it commits with what it records).

    ``target`` is a pseudonym, a stored (de-identified) UID, a cohort (``cohort:NAME@VERSION``)
    or an export run: never an original identifier.
    """
    db.execute(
        insert(AuditEvent),
        {
            "at": utcnow(),
            "actor": actor[:256],
            "action": action[:64],
            "target": target[:128],
            "outcome": outcome[:32],
        },
    )
