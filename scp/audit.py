"""The DIMSE door's audit events: associations (accepted or refused, and why), C-FIND,
C-MOVE and C-GET. Stores are counted by the ingest listener ``audit.stores``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pynetdicom.association import Association

from audit import Action, AuditTrail, Door
from catalog import StoredInstance
from scp.tls import is_tls


class DimseAudit:
    """Records what associations asked for; with no trail (a bare test server) nothing."""

    def __init__(self, trail: AuditTrail | None) -> None:
        self.trail = trail

    def association(self, assoc: Association, *, refused: str | None = None) -> None:
        """An association accepted, or refused for the reason ``refused``."""
        request = assoc.requestor.primitive
        called = str(request.called_ae_title).strip() if request is not None else ""
        detail: dict[str, object] = {"called": called, "tls": is_tls(assoc)}
        if refused is not None:
            detail["reason"] = refused
        self._record(
            Action.ASSOCIATION, assoc, outcome="refused" if refused else "ok", detail=detail
        )

    def query(
        self,
        assoc: Association,
        level: str,
        keys: Iterable[str],
        studies: Iterable[str] = (),
        *,
        matches: int = 0,
        outcome: str = "ok",
    ) -> None:
        """A C-FIND: the keys it matched on (never their values: they may be a patient's
        name typed by the caller), the number of matches and the studies among them."""
        self._record(
            Action.QUERY,
            assoc,
            outcome=outcome,
            target=f"C-FIND {level}",
            studies=studies,
            detail={"keys": sorted(keys), "matches": matches},
        )

    def retrieve(
        self,
        assoc: Association,
        service: str,
        instances: Sequence[StoredInstance],
        *,
        destination: str | None = None,
        outcome: str = "ok",
    ) -> None:
        """A C-MOVE (to ``destination``) or C-GET about to send ``instances``."""
        detail: dict[str, object] = {"instances": len(instances)}
        if destination is not None:
            detail["destination"] = destination
        self._record(
            Action.MOVE if service == "C-MOVE" else Action.RETRIEVE,
            assoc,
            outcome=outcome,
            target=service if destination is None else f"{service} to {destination}",
            studies={instance.study_instance_uid for instance in instances},
            detail=detail,
        )

    def _record(
        self,
        action: Action,
        assoc: Association,
        *,
        outcome: str,
        target: str = "",
        studies: Iterable[str] = (),
        detail: dict[str, object],
    ) -> None:
        if self.trail is None:
            return
        requestor = assoc.requestor
        request = requestor.primitive
        calling = str(request.calling_ae_title).strip() if request is not None else ""
        self.trail.record(
            action,
            actor=calling or str(requestor.ae_title).strip(),
            outcome=outcome,
            door=Door.DIMSE,
            remote=f"{requestor.address}:{requestor.port}",
            target=target,
            studies=studies,
            detail=detail,
        )
