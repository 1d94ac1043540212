"""What flows through ingest: where an instance came from and what became of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

Door = Literal["dimse", "stow", "sync", "folder", "review"]
"""Where an instance came in; ``review`` is a release from quarantine (by a person)."""


class Outcome(enum.Enum):
    """The one result type every door maps to its protocol's status."""

    STORED = "stored"
    REPLACED = "replaced"  # same SOP Instance UID, different bytes: the newer version is kept
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: success, no new copy
    REJECTED_INVALID = "rejected_invalid"  # not parsable DICOM, or required UIDs missing
    REJECTED_MISMATCH = "rejected_mismatch"  # data set does not match the request's SOP class
    REJECTED_DEID = "rejected_deid"  # de-identification refused it (e.g. burned-in text)
    FAILED_STORAGE = "failed_storage"  # blob could not be written (disk full, I/O error)
    FAILED_INDEX = "failed_index"  # catalog could not commit (down, locked)
    FAILED_INTERNAL = "failed_internal"  # a bug: logged with its traceback

    @property
    def success(self) -> bool:
        return self in (Outcome.STORED, Outcome.REPLACED, Outcome.DUPLICATE)


class ReviewError(LookupError):
    """No quarantined instance has that UID."""


@dataclass(frozen=True)
class Source:
    """Who sent an instance, through which door (a session per connection, as dcm4chee)."""

    door: Door
    remote: str
    calling_aet: str | None = None
    called_aet: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    projects: tuple[str, ...] = ()
    """Projects the door puts the instance's study in (an uploader's own), beside those
    the ``access.projects`` rules give."""
    actor: str | None = None
    """Who sent it, for the audit trail: an HTTP caller's name, the user of a command
    (``None``: the calling AE title, or the door itself)."""


@dataclass(frozen=True)
class Expected:
    """What the request announced (C-STORE's Affected SOP Class/Instance UID, the study of a
    STOW-RS ``POST /studies/{study}``), compared with the data set as received."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """What became of one instance. UIDs are the stored (de-identified) ones."""

    outcome: Outcome
    source: Source
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    size: int = 0
    quarantined: bool = False
    """Stored, but held out of the index until reviewed (:meth:`Ingestor.release`)."""
    seconds: float = 0.0
    reason: str = ""
    """Why it failed, for the peer and the log; never a value from the data set."""
