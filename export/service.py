"""Export a frozen cohort: to a folder (resumable) or as a zip streamed while it is written.

Both go the same way: for each frozen series, in order, locate its pinned instances in the
blob store (refusing any whose content changed since the freeze), let the format's writer
turn them into files, then write the manifests and ``dataset.json``. Each export is an
``ExportRun`` row and two audit events (``export`` started, then done, failed or interrupted).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, get_args

from sqlalchemy import insert, select, update

from catalog import Database
from catalog.audit import record_audit
from catalog.models import ExportRun, utcnow
from config.export import ExportSettings
from export.archive import ZipStream
from export.cohorts import Cohorts, FrozenCohort, FrozenSeries
from export.errors import DiskFullError, ExportError, FrozenDataChangedError
from export.folder import (
    Journal,
    iter_temp_files,
    open_blob,
    raise_if_full,
    write_atomic,
    write_files,
)
from export.manifest import manifest_files
from export.writers import (
    BlobCopy,
    DicomWriter,
    NiftiWriter,
    PngWriter,
    SeriesResult,
    StoredInstance,
    Writer,
)
from storage import BlobStore

log = logging.getLogger(__name__)

Format = Literal["dicom", "nifti", "png"]
FORMATS: tuple[str, ...] = get_args(Format)

COPY_THREADS = 4
"""Files written at once by a folder export (copies mostly wait on the kernel, not the GIL)."""
PREFETCH = 1
"""Units converted ahead of the one being written (NIfTI and PNG work partly outside the GIL);
memory holds at most PREFETCH + 1 converted units."""
PART_SIZE = 32
"""Instances per unit of work for per-instance formats (DICOM, PNG)."""
T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int], None]
"""Called with the number of instances just handled."""


@dataclass(frozen=True)
class ExportSummary:
    run_id: int
    cohort: str
    format: str
    files: int
    bytes: int
    series: int
    skipped: tuple[tuple[str, str], ...]
    """(series UID, reason) of every series that could not be converted."""
    partial: tuple[tuple[str, str], ...]
    """(series UID, reasons) of every series some of whose instances could not be."""
    reused_series: int
    manifest_sha256: str


@dataclass(frozen=True)
class Unit:
    """A piece of an export's work: a series or a part of one."""

    series: FrozenSeries
    instances: Sequence[StoredInstance]
    last: bool
    """The last part of its series."""
    kept: SeriesResult | None = None
    """The series' result from an earlier run, its files intact (resume)."""


def writer_of(writer: Writer) -> Callable[[Unit], SeriesResult]:
    """The conversion of one unit (runs in a worker thread)."""

    def convert(unit: Unit) -> SeriesResult:
        if unit.kept is not None:
            return unit.kept
        return writer.write(unit.series, unit.instances)

    return convert


@dataclass(frozen=True)
class ZipDownload:
    filename: str
    chunks: Iterator[bytes]
    cohort: FrozenCohort


class Exporter:
    """Exports frozen cohorts; shared by the CLI and the HTTP API."""

    def __init__(
        self, db: Database, blobs: BlobStore, cohorts: Cohorts, settings: ExportSettings
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.cohorts = cohorts
        self.settings = settings

    def writer(self, format_name: str) -> Writer:
        if format_name == "dicom":
            return DicomWriter()
        if format_name == "nifti":
            return NiftiWriter(self.blobs, compress=self.settings.nifti_compress)
        if format_name == "png":
            return PngWriter(
                self.blobs,
                windows=self.settings.png_windows,
                percentiles=self.settings.png_percentiles,
            )
        raise ExportError(f"unknown format {format_name!r}: use one of {', '.join(FORMATS)}")

    def prepare(
        self, ref: str | int, format_name: str, projects: frozenset[str] | None = None
    ) -> tuple[FrozenCohort, Writer]:
        """The frozen cohort (as a caller of ``projects`` finds it) and the writer; raises
        before anything is written."""
        writer = self.writer(format_name)
        cohort = self.cohorts.frozen(ref, projects)
        if not self.cohorts.verify_hash(cohort):
            raise FrozenDataChangedError(
                f"the frozen members of cohort {cohort.info.ref} no longer give the manifest "
                f"hash recorded at the freeze ({cohort.info.manifest_sha256}): the catalog "
                "was changed by hand; define and freeze a new version"
            )
        return cohort, writer

    # ------------------------------------------------------------------------- folder

    def to_folder(
        self,
        ref: str | int,
        format_name: str,
        out: Path,
        *,
        actor: str,
        progress: Progress | None = None,
    ) -> ExportSummary:
        """Export into ``out``; run it again after an interruption to resume.

        Raises
        ------
        DiskFullError
            The disk filled up; what was written stays and is reused on the next run.
        DestinationError
            ``out`` holds something else.
        """
        cohort, writer = self.prepare(ref, format_name)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise_if_full(exc, out)
            raise
        journal = Journal(
            out,
            {
                "cohort": cohort.info.ref,
                "manifest_sha256": cohort.info.manifest_sha256,
                "format": format_name,
            },
        )
        journal.open()
        for leftover in iter_temp_files(out):
            leftover.unlink()
        run_id = self._start(cohort, format_name, f"folder:{out.resolve()}", actor)
        results: list[tuple[FrozenSeries, SeriesResult]] = []
        reused = 0
        pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="export")
        parts: list[SeriesResult] = []
        try:
            for unit, result in prefetch(
                self._units(cohort, writer, journal), writer_of(writer), pool
            ):
                if unit.kept is not None:
                    reused += 1
                else:
                    write_files(out, result.files, self.blobs, pool)
                    parts.append(result.written())
                    if unit.last:
                        result = SeriesResult.merge(parts)
                        parts.clear()
                        journal.add(unit.series.series_uid, result)
                if unit.last:
                    results.append((unit.series, result))
                if progress:
                    progress(len(unit.instances))
            for name, data in manifest_files(cohort, format_name, writer.per_instance, results):
                write_atomic(out / name, data)
        except (DiskFullError, KeyboardInterrupt) as exc:
            self._finish(run_id, cohort, "interrupted", results, _reason(exc))
            raise
        except BaseException as exc:
            self._finish(run_id, cohort, "failed", results, _reason(exc))
            raise
        finally:
            pool.shutdown(cancel_futures=True)
            journal.close()
        return self._finish(run_id, cohort, "done", results, "", reused=reused)

    # ------------------------------------------------------------------------- zip

    def to_zip(
        self,
        ref: str | int,
        format_name: str,
        *,
        actor: str,
        projects: frozenset[str] | None = None,
    ) -> ZipDownload:
        """A zip of the export for a caller of ``projects`` (a cohort they do not see does
        not exist), produced while it is read; checks run before it starts."""
        cohort, writer = self.prepare(ref, format_name, projects)
        run_id = self._start(cohort, format_name, "download", actor)
        frozen_at = cohort.info.frozen_at or utcnow()
        stream = ZipStream(frozen_at.timetuple()[:6])
        root = f"{cohort.info.name}-v{cohort.info.version}-{format_name}"

        def chunks() -> Iterator[bytes]:
            results: list[tuple[FrozenSeries, SeriesResult]] = []
            status, message = "interrupted", "the client stopped reading"
            pool = ThreadPoolExecutor(PREFETCH, thread_name_prefix="export-zip")
            parts: list[SeriesResult] = []
            try:
                units = self._units(cohort, writer, None)
                for unit, result in prefetch(units, writer_of(writer), pool):
                    for file in result.files:
                        name = f"{root}/{file.path}"
                        if isinstance(file.content, BlobCopy):
                            with open_blob(self.blobs, file.content.key, file.path) as source:
                                yield from stream.add_stream(name, source)
                        else:
                            yield from stream.add_bytes(name, file.content)
                    parts.append(result.written())
                    if unit.last:
                        results.append((unit.series, SeriesResult.merge(parts)))
                        parts.clear()
                for name, data in manifest_files(cohort, format_name, writer.per_instance, results):
                    yield from stream.add_bytes(f"{root}/{name}", data)
                yield from stream.close()
                status, message = "done", ""
            except Exception as exc:
                status, message = "failed", _reason(exc)
                log.error("export of cohort %s failed: %s", cohort.info.ref, message)
                raise
            finally:
                pool.shutdown(cancel_futures=True)
                with contextlib.suppress(Exception):
                    self._finish(run_id, cohort, status, results, message)

        return ZipDownload(f"{root}.zip", chunks(), cohort)

    # ------------------------------------------------------------------------- shared

    def _units(
        self, cohort: FrozenCohort, writer: Writer, journal: Journal | None
    ) -> Iterator[Unit]:
        """The work of an export in order: each series, in parts of at most ``PART_SIZE``
        instances for per-instance formats (so a long series is never held whole), or the
        journaled result of a series still intact in the destination."""
        for series in cohort.series:
            instances = self.stored_instances(series)
            if journal is not None:
                kept = journal.verified(series.series_uid, writer.plan(series, instances))
                if kept is not None:
                    yield Unit(series, instances, last=True, kept=kept)
                    continue
            size = PART_SIZE if writer.per_instance else max(len(instances), 1)
            starts = range(0, max(len(instances), 1), size)
            for start in starts:
                part = instances[start : start + size]
                yield Unit(series, part, last=start == starts[-1])

    def stored_instances(self, series: FrozenSeries) -> list[StoredInstance]:
        """The pinned instances of a series with their current blobs (content unchanged)."""
        pinned = self.cohorts.frozen_instances(series)
        stored: list[StoredInstance] = []
        for instance, blob_key, sha256 in pinned:
            if blob_key is None or sha256 != instance.sha256:
                what = "was removed" if blob_key is None else "was replaced by another version"
                raise FrozenDataChangedError(
                    f"instance {instance.sop_instance_uid} of the frozen cohort {what} since "
                    "the freeze; the cohort cannot be exported identically any more: define "
                    "and freeze a new version"
                )
            stored.append(StoredInstance(instance, blob_key))
        return stored

    def _start(self, cohort: FrozenCohort, format_name: str, destination: str, actor: str) -> int:
        with self.db.write() as session:
            run_id = session.execute(
                insert(ExportRun).returning(ExportRun.id),
                {
                    "cohort_pk": cohort.info.id,
                    "format": format_name,
                    "destination": destination[:1024],
                    "actor": actor[:128],
                    "status": "running",
                    "started_at": utcnow(),
                    "files": 0,
                    "bytes": 0,
                    "skipped_series": 0,
                    "message": "",
                },
            ).scalar_one()
            record_audit(session, actor, "export", _audit_target(run_id, cohort), "started")
        return int(run_id)

    def _finish(
        self,
        run_id: int,
        cohort: FrozenCohort,
        status: str,
        results: Sequence[tuple[FrozenSeries, SeriesResult]],
        message: str,
        *,
        reused: int = 0,
    ) -> ExportSummary:
        files = sum(len(r.files) for _, r in results)
        size = sum(f.size for _, r in results for f in r.files)
        skipped = tuple((s.series_uid, r.reason) for s, r in results if r.status == "skipped")
        partial = tuple((s.series_uid, r.reason) for s, r in results if r.status == "partial")
        with self.db.write() as session:
            session.execute(
                update(ExportRun)
                .where(ExportRun.id == run_id)
                .values(
                    status=status,
                    finished_at=utcnow(),
                    files=files,
                    bytes=size,
                    skipped_series=len(skipped),
                    message=message[:2000],
                )
            )
            actor, format_name = session.execute(
                select(ExportRun.actor, ExportRun.format).where(ExportRun.id == run_id)
            ).one()
            record_audit(session, actor, "export", _audit_target(run_id, cohort), status)
        return ExportSummary(
            run_id=run_id,
            cohort=cohort.info.ref,
            format=format_name,
            files=files,
            bytes=size,
            series=len(results),
            skipped=skipped,
            partial=partial,
            reused_series=reused,
            manifest_sha256=cohort.info.manifest_sha256 or "",
        )


def prefetch(
    items: Iterable[T], work: Callable[[T], R], pool: Executor, ahead: int = PREFETCH
) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` in order, with up to ``ahead`` items being worked on in
    ``pool`` meanwhile: the next series converts while this one is written or sent. At most
    ``ahead + 1`` results are held at once."""
    pending: deque[tuple[T, Future[R]]] = deque()
    upcoming = iter(items)
    for item in upcoming:
        pending.append((item, pool.submit(work, item)))
        if len(pending) > ahead:
            break
    while pending:
        item, future = pending.popleft()
        result = future.result()
        for following in upcoming:
            pending.append((following, pool.submit(work, following)))
            break
        yield item, result


def _audit_target(run_id: int, cohort: FrozenCohort) -> str:
    """The export run (its row holds format, destination and figures) and its cohort."""
    return f"export_run:{run_id} cohort:{cohort.info.ref}"


def _reason(exc: BaseException) -> str:
    """A message for the run record: ours are meant for people; others only by their type
    (a library's message can quote data-set values)."""
    if isinstance(exc, ExportError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return type(exc).__name__
