"""Orthanc sync: follow a source Orthanc's change log and ingest every new stable study.

Exactly once, whatever stops it:

- the cursor (the last change fully processed) lives in the catalog and moves past a
  StableStudy change only in the transaction that records the study as fetched, after every
  one of its instances went through ``ingest.Ingestor.accept`` (so was de-identified);
- a run that stops mid-study (Orthanc down, a 500, a timeout, a full disk, the node
  stopping) leaves the cursor before that study; the next run fetches it again and ingest
  answers ``duplicate`` for the instances already stored, which keeps no second copy;
- an instance pacsnode refuses for good (not DICOM, refused by de-identification) does not
  block the feed: its study is recorded as ``incomplete``, never as ``synced``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from catalog import Database
from catalog import sync as sync_state
from catalog.sync import StudySyncStatus, SyncedStudyRecord
from config import OrthancSyncSettings
from ingest import Ingestor, Outcome, Source
from jobs.context import JobContext, JobFailedError, JobInterruptedError
from jobs.orthanc import OrthancNotFoundError, OrthancSource

log = logging.getLogger(__name__)

REFUSED_FOR_GOOD = frozenset(
    {
        Outcome.REJECTED_INVALID,
        Outcome.REJECTED_MISMATCH,
        Outcome.REJECTED_DEID,
        Outcome.FAILED_INTERNAL,
    }
)
"""Outcomes that fetching the instance again would not change."""


@dataclass
class StudyResult:
    """What fetching one study did."""

    study_instance_uid: str | None = None
    """The stored (de-identified) Study Instance UID."""
    stored: int = 0
    duplicate: int = 0
    refused: int = 0
    vanished: int = 0
    """Instances deleted from Orthanc between listing and fetching them."""

    @property
    def accepted(self) -> int:
        return self.stored + self.duplicate

    @property
    def status(self) -> StudySyncStatus:
        return StudySyncStatus.INCOMPLETE if self.refused else StudySyncStatus.SYNCED


@dataclass
class SyncReport:
    """What one run did."""

    cursor: int = 0
    studies: list[StudyResult] = field(default_factory=list)

    def summary(self) -> str:
        synced = sum(1 for s in self.studies if s.status is StudySyncStatus.SYNCED)
        incomplete = len(self.studies) - synced
        stored = sum(s.stored for s in self.studies)
        duplicate = sum(s.duplicate for s in self.studies)
        refused = sum(s.refused for s in self.studies)
        text = f"{synced} studies synced ({stored} instances stored, {duplicate} already there)"
        if incomplete:
            text += f", {incomplete} incomplete ({refused} instances refused)"
        return f"{text}; up to change {self.cursor}"


class OrthancSync:
    """Fetches studies from one source Orthanc into pacsnode.

    Parameters
    ----------
    settings
        Where the source is and how patiently to talk to it.
    db
        The catalog, which keeps the cursor and the list of fetched studies.
    ingestor
        The pipeline every instance goes through.
    stop
        Set to make a run stop between two instances (:class:`JobInterruptedError`).
    """

    def __init__(
        self,
        settings: OrthancSyncSettings,
        db: Database,
        ingestor: Ingestor,
        stop: threading.Event | None = None,
    ) -> None:
        self._stop = stop or threading.Event()
        self.source = OrthancSource(settings, self._stop)
        self._db = db
        self._ingestor = ingestor

    @property
    def source_key(self) -> str:
        """How the catalog names this source: its URL."""
        return self.source.url

    def close(self) -> None:
        self.source.close()

    def run(self) -> SyncReport:
        """Process every change after the cursor, until Orthanc has no more."""
        since = self._start_cursor()
        report = SyncReport(cursor=since)
        while True:
            page = self.source.changes(since)
            for change in page.changes:
                if change.is_stable_study:
                    self._check_stop()
                    result = self._sync_study(change.resource_id, change.seq)
                    if result is not None:
                        report.studies.append(result)
            if page.last > since:
                sync_state.advance_cursor(self._db, self.source_key, page.last)
                since = page.last
            report.cursor = since
            if page.done or not page.changes:
                return report

    def pull_study(
        self, study: str, on_instance: Callable[[int, int], None] | None = None
    ) -> StudyResult:
        """Fetch one study now, given by its Orthanc ID or its Study Instance UID; the cursor
        does not move. ``on_instance(done, total)`` follows the progress."""
        orthanc_id = self.source.find_study(study)
        result = self._fetch(orthanc_id, on_instance)
        self._record(result, change_seq=None)
        return result

    def _start_cursor(self) -> int:
        since = sync_state.cursor(self._db, self.source_key)
        if since:
            newest = self.source.last_change()
            if newest < since:
                log.warning(
                    "the change log of the Orthanc at %s ends at %d, before our cursor %d "
                    "(was its database reset?); following it from the start",
                    self.source_key,
                    newest,
                    since,
                )
                sync_state.reset_cursor(self._db, self.source_key)
                since = 0
        return since

    def _sync_study(self, orthanc_id: str, change_seq: int) -> StudyResult | None:
        try:
            result = self._fetch(orthanc_id)
        except OrthancNotFoundError:
            log.info("change %d: the study is no longer in Orthanc; skipped", change_seq)
            sync_state.advance_cursor(self._db, self.source_key, change_seq)
            return None
        self._record(result, change_seq)
        return result

    def _fetch(
        self, orthanc_id: str, on_instance: Callable[[int, int], None] | None = None
    ) -> StudyResult:
        """Every instance of a study through ingest; raises when one could not be stored
        now (the study is then not recorded, and fetched again by the next run)."""
        result = StudyResult()
        instance_ids = self.source.study_instances(orthanc_id)
        for done, instance_id in enumerate(instance_ids):
            self._check_stop()
            if on_instance is not None:
                on_instance(done, len(instance_ids))
            try:
                raw = self.source.instance_file(instance_id)
            except OrthancNotFoundError:
                result.vanished += 1
                continue
            outcome = self._ingestor.accept(raw, Source(door="sync", remote=self.source.remote))
            if outcome.outcome.success:
                result.study_instance_uid = outcome.study_instance_uid
                if outcome.outcome is Outcome.DUPLICATE:
                    result.duplicate += 1
                else:
                    result.stored += 1
            elif outcome.outcome in REFUSED_FOR_GOOD:
                result.refused += 1
            else:
                raise JobFailedError(
                    f"pacsnode could not store an instance ({outcome.outcome.value}: "
                    f"{outcome.reason}); the study will be fetched again"
                )
        if on_instance is not None:
            on_instance(len(instance_ids), len(instance_ids))
        return result

    def _record(self, result: StudyResult, change_seq: int | None) -> None:
        sync_state.record_study(
            self._db,
            self.source_key,
            SyncedStudyRecord(
                change_seq=change_seq,
                study_instance_uid=result.study_instance_uid,
                instances=result.accepted,
                rejected=result.refused,
                status=result.status,
            ),
        )
        log.info(
            "study %s %s from %s: %d stored, %d already there, %d refused",
            result.study_instance_uid or "(no instance accepted)",
            result.status.value,
            self.source_key,
            result.stored,
            result.duplicate,
            result.refused,
        )

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise JobInterruptedError("the node is stopping; the sync resumes at its next run")


def run_sync_job(context: JobContext) -> str:
    """The scheduled job: one run of the Orthanc sync (see :class:`OrthancSync`)."""
    sync = OrthancSync(context.settings.orthanc_sync, context.db, context.ingestor, context.stop)
    try:
        return sync.run().summary()
    finally:
        sync.close()
