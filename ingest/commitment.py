"""Storage Commitment (PS3.4 Annex J): does the archive hold, intact, what a sender names?

A sender names its instances by the UIDs it sent; ingest stored them under the UIDs
de-identification gave them. Each UID is mapped through the de-identifier ingest uses
(:meth:`deid.Deidentifier.stored_uid`: the HMAC pseudonym, or the UID itself when UIDs are
retained or de-identification is off), looked up in the catalog, and the blob is re-read
and compared with its recorded size and sha256. An instance is committed when it is
indexed under the SOP class the sender names and its blob is intact.

The sender's UIDs stay with the caller, in memory: nothing here logs or records them; the
log line and the audit row name the requester and the counts.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from catalog import RetrieveKeys, StoredInstance, locate_keys
from catalog.audit import record_audit
from ingest.integrity import ProblemKind, check_blob
from ingest.model import Source
from ingest.pipeline import Ingestor
from storage import BlobStore

log = logging.getLogger(__name__)

AUDIT_ACTION = "storage_commitment"


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1)."""

    PROCESSING_FAILURE = 0x0110  # blob fails its size/sha256 check; catalog or store unreadable
    NO_SUCH_OBJECT_INSTANCE = 0x0112  # never stored, refused, held for review, or blob gone
    CLASS_INSTANCE_CONFLICT = 0x0119  # stored under another SOP class than the one named

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


@dataclass(frozen=True)
class Reference:
    """One item of a Referenced SOP Sequence, with the sender's own UIDs."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentResult:
    """Every reference of a request, in its order, committed or failed with a reason."""

    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, FailureReason], ...]

    def summary(self) -> str:
        """Counts for a log line (never a UID)."""
        total = len(self.committed) + len(self.failed)
        text = f"{len(self.committed)} of {total} instances committed"
        reasons = Counter(reason for _, reason in self.failed)
        if reasons:
            text += "; failed: " + ", ".join(
                f"{count} {reason.label} (0x{reason:04X})" for reason, count in reasons.items()
            )
        return text


def check_commitment(
    ingestor: Ingestor,
    references: Sequence[Reference],
    source: Source,
    *,
    projects: frozenset[str] | None = None,
) -> CommitmentResult:
    """Whether the archive holds each of ``references``, as ingest stored it, in a study of
    ``projects`` (``None``: any study; an instance of another project is no such instance:
    the requester must not learn it exists).

    Never raises: a catalog that cannot answer fails every reference with
    :attr:`FailureReason.PROCESSING_FAILURE`. The check is recorded in the audit trail.
    """
    requester = source.calling_aet or source.remote
    stored_uids = [ingestor.deid.stored_uid(ref.sop_instance_uid) for ref in references]
    try:
        found = _locate(ingestor, stored_uids, projects)
    except SQLAlchemyError as exc:
        log.error(
            "storage commitment for %s (%s): catalog unavailable (%s)",
            requester,
            source.remote,
            type(exc).__name__,
        )
        found = None
    committed: list[Reference] = []
    failed: list[tuple[Reference, FailureReason]] = []
    for ref, uid in zip(references, stored_uids, strict=True):
        if found is None:
            reason: FailureReason | None = FailureReason.PROCESSING_FAILURE
        else:
            reason = _failure(ingestor.blobs, ref, found.get(uid))
        if reason is None:
            committed.append(ref)
        else:
            failed.append((ref, reason))
    result = CommitmentResult(tuple(committed), tuple(failed))
    damaged = sum(1 for _, r in failed if r is FailureReason.PROCESSING_FAILURE)
    if found is not None and damaged:
        log.error(
            "storage commitment for %s: %d stored instances failed their check (blob "
            "unreadable or not its recorded sha256); run `pacsnode verify`",
            requester,
            damaged,
        )
    _record(ingestor, source, result)
    return result


def _locate(
    ingestor: Ingestor, stored_uids: list[str], projects: frozenset[str] | None
) -> dict[str, StoredInstance]:
    if not stored_uids:
        return {}
    keys = RetrieveKeys(sop_instance_uids=tuple(dict.fromkeys(stored_uids)))
    found = locate_keys(ingestor.catalog.db, keys, projects=projects)
    return {i.sop_instance_uid: i for i in found}


def _failure(
    blobs: BlobStore, ref: Reference, instance: StoredInstance | None
) -> FailureReason | None:
    if instance is None:
        return FailureReason.NO_SUCH_OBJECT_INSTANCE
    if instance.sop_class_uid != ref.sop_class_uid.strip("\0 "):
        return FailureReason.CLASS_INSTANCE_CONFLICT
    try:
        problem = check_blob(
            blobs, instance.blob_key, instance.sop_instance_uid, instance.sha256, instance.size
        )
    except Exception as exc:
        log.error("storage commitment: a blob cannot be read (%s)", type(exc).__name__)
        return FailureReason.PROCESSING_FAILURE
    if problem is None:
        return None
    if problem.kind is ProblemKind.MISSING:
        return FailureReason.NO_SUCH_OBJECT_INSTANCE
    return FailureReason.PROCESSING_FAILURE


def _record(ingestor: Ingestor, source: Source, result: CommitmentResult) -> None:
    """The log line and the audit row of one check: requester and counts, never a UID."""
    requester = source.calling_aet or source.remote
    log.log(
        logging.WARNING if result.failed else logging.INFO,
        "storage commitment for %s (%s): %s",
        requester,
        source.remote,
        result.summary(),
    )
    total = len(result.committed) + len(result.failed)
    outcome = "committed" if not result.failed else f"{len(result.failed)} failed"
    try:
        with ingestor.catalog.db.write() as session:
            record_audit(
                session, f"{source.door}:{requester}", AUDIT_ACTION, f"{total} instances", outcome
            )
    except SQLAlchemyError as exc:
        log.warning("storage commitment audit row not written (%s)", type(exc).__name__)
