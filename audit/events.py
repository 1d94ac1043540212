"""One audit event, as the catalog keeps it and as it is sent on (A.5 XML, syslog)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from catalog.audit import AuditRecord

__all__ = ["Action", "AuditNote", "AuditRecord", "Door", "Outcome", "outcome_of"]


class Action(StrEnum):
    """What happened. Each maps to a DICOM audit Event ID (``audit.dicom_xml``)."""

    ASSOCIATION = "association"
    """A DICOM association was asked for (outcome ``ok`` or ``refused``)."""
    STORE = "store"
    """Instances arrived (per study and association or request, with the count)."""
    QUERY = "query"
    """QIDO-RS or C-FIND (the keys asked, never their values, and the number of matches)."""
    RETRIEVE = "retrieve"
    """WADO-RS, WADO-URI, C-GET, the instances sent (per study)."""
    MOVE = "move"
    """C-MOVE: instances sent to another AE title (per study)."""
    EXPORT = "export"
    """An export of a cohort, by the CLI or downloaded over HTTP (``started``, then its
    status)."""
    COHORT_DEFINE = "cohort_define"
    COHORT_FREEZE = "cohort_freeze"
    REIDENTIFY = "reidentify"
    """An original identifier was read from the vault (with the reason)."""
    VAULT_SCAN = "deid_check"
    """Every original identifier was read from the vault (a check of the archive)."""
    QUARANTINE_RELEASE = "quarantine_release"
    QUARANTINE_DISCARD = "quarantine_discard"
    COMMITMENT = "storage_commitment"
    """A Storage Commitment request was answered."""
    LOGIN = "login"
    """A login (outcome ``ok`` or ``failed``)."""
    LOGOUT = "logout"
    TOKEN_CHANGE = "token_change"  # noqa: S105 (an action name, not a secret)
    """An API token created or revoked."""
    USER_CHANGE = "user_change"
    """A user created, changed (password, roles, projects) or removed."""
    ACCESS_DENIED = "access_denied"
    """A request refused: 401 (nobody the node knows) or 403 (not allowed)."""


class Door(StrEnum):
    """Where the event came in."""

    DIMSE = "dimse"
    HTTP = "http"
    CLI = "cli"
    NODE = "node"


class Outcome(StrEnum):
    """How an event ended, as DICOM audit messages class it (EventOutcomeIndicator)."""

    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"


_SUCCESSES = frozenset({"ok", "found", "started", "running", "done", "committed", "complete"})
_REFUSALS = frozenset({"refused", "not_found"})


def outcome_of(recorded: str) -> Outcome:
    """The class of an outcome as recorded: the doors write ok, refused or failed; the
    vault, exports and Storage Commitment their own words (found, not_found, started,
    committed, ``2 failed``, partial ...)."""
    if recorded in _SUCCESSES:
        return Outcome.OK
    return Outcome.REFUSED if recorded in _REFUSALS else Outcome.FAILED


@dataclass(frozen=True)
class AuditNote:
    """What an HTTP route did, left on ``request.state.audit`` for the door's audit
    middleware (``api.audited``), which adds who, from where and the outcome."""

    action: str
    studies: tuple[str, ...] = ()
    target: str = ""
    detail: dict[str, object] = field(default_factory=dict)
    aggregate: bool = False
    actor: str | None = None
