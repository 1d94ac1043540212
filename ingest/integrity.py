"""Integrity of the archive: every indexed instance has its blob with the recorded sha256.

Also finds what a crash can leave behind: blobs that no instance refers to (written, but the
index commit never happened) and unfinished temporary files. Those are only reported as
problems once older than a grace period, so writes in progress (in this or another node
process) are never mistaken for debris.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import select

from catalog import Database, catalog_stats
from catalog.models import Instance, QuarantinedInstance
from storage import BlobNotFoundError, BlobStore

_CHUNK = 1 << 20
_PREFIXES = [f"{n:02x}" for n in range(256)]


class ProblemKind(enum.Enum):
    MISSING = "missing"  # indexed instance whose blob is gone
    CORRUPT = "corrupt"  # blob whose bytes no longer match the recorded sha256 / size
    ORPHAN = "orphan"  # blob no instance refers to
    TEMPORARY = "temporary"  # unfinished write left by a crash


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    ref: str
    """The stored SOP Instance UID (missing, corrupt), blob key (orphan) or temp file name."""


@dataclass
class IntegrityReport:
    instances: int = 0
    blobs: int = 0
    problems: list[Problem] = field(default_factory=list)

    def of(self, kind: ProblemKind) -> list[Problem]:
        return [p for p in self.problems if p.kind is kind]


def count_instances(db: Database) -> int:
    """How many instances :func:`check` will verify (for a progress bar)."""
    return catalog_stats(db).instances


def check(
    db: Database,
    blobs: BlobStore,
    *,
    verify_hashes: bool = True,
    grace_seconds: float = 600.0,
    advance: Callable[[int], None] = lambda _: None,
) -> IntegrityReport:
    """Verify every instance's blob, then look for orphans and temporary files.

    Parameters
    ----------
    verify_hashes
        Re-read every blob and compare its sha256 (slow on a large archive); without it
        only presence and size are checked.
    grace_seconds
        Orphans and temporary files younger than this are writes in progress, not problems.
    advance
        Called with the number of instances checked since the last call.
    """
    report = IntegrityReport()
    for prefix in _PREFIXES:
        indexed = dict(_indexed(db, prefix))
        for key, (uid, sha256, size) in indexed.items():
            problem = check_blob(blobs, key, uid, sha256, size, verify_hashes)
            if problem:
                report.problems.append(problem)
        report.instances += len(indexed)
        advance(len(indexed))
        for key in blobs.keys(prefix):
            report.blobs += 1
            if key not in indexed and _older_than(blobs, key, grace_seconds):
                report.problems.append(Problem(ProblemKind.ORPHAN, key))
    report.problems.extend(
        Problem(ProblemKind.TEMPORARY, name) for name in blobs.stale_temporaries(grace_seconds)
    )
    return report


def repair(report: IntegrityReport, blobs: BlobStore) -> int:
    """Remove the orphans and temporary files of ``report``; the number removed.

    Missing and corrupt instances cannot be repaired here: the sender must send them again.
    """
    for problem in report.of(ProblemKind.ORPHAN):
        blobs.remove(problem.ref)
    for problem in report.of(ProblemKind.TEMPORARY):
        blobs.remove_temporary(problem.ref)
    return len(report.of(ProblemKind.ORPHAN)) + len(report.of(ProblemKind.TEMPORARY))


def _indexed(db: Database, prefix: str) -> Iterator[tuple[str, tuple[str, str, int]]]:
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    with db.read() as session:
        rows = session.execute(
            select(Instance.blob_key, Instance.sop_instance_uid, Instance.sha256, Instance.size)
            .where(Instance.blob_key >= prefix, Instance.blob_key < upper)
            .execution_options(yield_per=1000)
        )
        for key, uid, sha256, size in rows:
            yield key, (uid, sha256, size)
        # Quarantined instances (burned-in policy) are stored too, outside the index.
        held = session.execute(
            select(
                QuarantinedInstance.blob_key,
                QuarantinedInstance.sop_instance_uid,
                QuarantinedInstance.sha256,
                QuarantinedInstance.size,
            ).where(QuarantinedInstance.blob_key >= prefix, QuarantinedInstance.blob_key < upper)
        )
        for key, uid, sha256, size in held:
            yield key, (uid, sha256, size)


def check_blob(
    blobs: BlobStore, key: str, uid: str, sha256: str, size: int, verify_hashes: bool = True
) -> Problem | None:
    """The problem of one stored instance's blob (missing, or not its recorded size and
    sha256), or None when it is intact. Other read errors of the store are raised."""
    try:
        if blobs.stat(key).size != size:
            return Problem(ProblemKind.CORRUPT, uid)
        if verify_hashes and _sha256(blobs, key) != sha256:
            return Problem(ProblemKind.CORRUPT, uid)
    except BlobNotFoundError:
        return Problem(ProblemKind.MISSING, uid)
    return None


def _sha256(blobs: BlobStore, key: str) -> str:
    digest = hashlib.sha256()
    with blobs.open(key) as blob:
        while chunk := blob.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _older_than(blobs: BlobStore, key: str, seconds: float) -> bool:
    try:
        return blobs.stat(key).modified < time.time() - seconds
    except BlobNotFoundError:
        return False  # removed meanwhile
