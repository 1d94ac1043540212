"""Store events: one per study, door and sender, counting what became of its instances."""

from __future__ import annotations

from audit.events import Action, Door
from audit.trail import AuditTrail
from ingest import IngestResult

_DOORS = {"dimse": Door.DIMSE, "stow": Door.HTTP, "folder": Door.CLI, "review": Door.CLI}


class StoreAudit:
    """Ingest listener: every instance counts in the (aggregated) store event of its
    study, sender and connection, e.g. ``{"stored": 120, "duplicate": 2}``; refused
    instances without a readable study are counted in an event with no study."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def __call__(self, result: IngestResult) -> None:
        source = result.source
        outcome = result.outcome
        self.trail.record(
            Action.STORE,
            actor=source.actor or source.calling_aet or source.door,
            outcome="ok" if outcome.success else "failed",
            door=_DOORS.get(source.door, Door.NODE),
            remote=source.remote,
            target=f"called {source.called_aet}" if source.called_aet else "",
            studies=(result.study_instance_uid,) if result.study_instance_uid else (),
            detail={"quarantined" if result.quarantined else outcome.value: 1},
            aggregate=True,
        )
