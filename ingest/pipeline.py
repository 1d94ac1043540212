"""The one pipeline every door uses: validate -> de-identify -> dedupe -> store -> index."""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from io import BytesIO
from typing import BinaryIO, Protocol

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import (
    _read_file_meta_info,
    data_element_generator,
    read_partial,
    read_preamble,
)
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError

from access.projects import ProjectRules
from catalog import CatalogWriter, Existing, IndexOutcome, InstanceRecord, extract, to_dicom_json
from catalog.elements import element_of
from catalog.quarantine import Held, QuarantineOutcome, find_held
from config.access import AccessSettings
from deid import Deidentifier, DeidRejectedError
from deid.engine import text_of
from ingest.early import EarlyBlob
from ingest.encoding import encode
from ingest.filemeta import group_after_meta
from ingest.identity import Deferred, content_sha256
from ingest.model import Expected, IngestResult, Outcome, ReviewError, Source
from ingest.pixeldata import pixel_data_problem
from storage import BlobNotFoundError, BlobRef, BlobStore, StorageError

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_META_PEEK = 1 << 16
"""Bytes read to find where the file meta ends without pydicom (a longer meta: pydicom)."""

ResultListener = Callable[[IngestResult], None]


class Encoded(Protocol):
    """The file to store of a received instance."""

    @property
    def size(self) -> int: ...

    def store(self, blobs: BlobStore) -> BlobRef:
        """Write it as a new blob (:class:`StorageError` if it cannot be)."""
        ...


class Received(Protocol):
    """An instance as received: in memory (bytes), or left in a spool when large
    (:mod:`ingest.spooled`)."""

    @property
    def deferred(self) -> Deferred | None:
        """Reads the values the parse left in the stream."""
        ...

    def parse(self) -> Dataset: ...

    def encode(self, dataset: Dataset, changed: bool) -> Encoded:
        """``dataset`` (read by :meth:`parse`, then de-identified) as a file to store."""
        ...


@dataclass(frozen=True)
class _InMemory:
    """A received Part 10 stream held in memory: the file to store is bytes too."""

    data: bytes
    deferred: Deferred | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def parse(self) -> Dataset:
        return parse(self.data)

    def encode(self, dataset: Dataset, changed: bool) -> _InMemory:
        return _InMemory(encode(dataset, self.data)) if changed else self

    def store(self, blobs: BlobStore) -> BlobRef:
        return blobs.put(self.data)


class _RejectedError(Exception):
    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class Ingestor:
    """Accepts instances from any door and answers only once they are durable and indexed.

    Safe to call from many threads at once (one per association); holds no state between
    calls besides its collaborators, so several processes can ingest into one catalog.

    Parameters
    ----------
    deid
        The de-identification stage.
    blobs
        Where instance files are stored.
    catalog
        The index writer.
    listeners
        Called with every result after it is final (after the commit for stored instances);
        an exception in a listener is logged and never changes the result.
    projects
        The rules that say which projects an arriving instance's study joins (read from the
        header before de-identification); none: every study is in ``default``.
    """

    def __init__(
        self,
        *,
        deid: Deidentifier,
        blobs: BlobStore,
        catalog: CatalogWriter,
        listeners: tuple[ResultListener, ...] = (),
        projects: ProjectRules | None = None,
    ) -> None:
        self.deid = deid
        self.projects = projects or ProjectRules(AccessSettings.model_validate({}))
        self.blobs = blobs
        self.catalog = catalog
        self.listeners = listeners

    def accept(
        self,
        raw: bytes,
        source: Source,
        expected: Expected | None = None,
        *,
        log_failure: bool = True,
    ) -> IngestResult:
        """Run ``raw`` (a DICOM Part 10 byte stream) through the pipeline.

        ``log_failure=False``: the caller logs refusals itself, as a summary of many (a
        STOW-RS request of 10,000 bad parts logs one line, not 10,000).
        """
        return self.accept_received(_InMemory(raw), source, expected, log_failure=log_failure)

    def accept_received(
        self,
        received: Received,
        source: Source,
        expected: Expected | None = None,
        *,
        log_failure: bool = True,
    ) -> IngestResult:
        """:meth:`accept` for an instance in any form (a large one left in a spool)."""
        return self._run(
            source, lambda: self._accept(received, source, expected), log_failure=log_failure
        )

    def release(self, sop_instance_uid: str, *, actor: str) -> IngestResult:
        """Index a quarantined instance (stored UID) after ``actor`` reviewed it.

        It goes through the same index step as :meth:`accept` (deduplicated against what is
        indexed, listeners told after the commit); its quarantine row goes and the release
        is audited in the index transaction.

        Raises
        ------
        ReviewError
            No quarantined instance has that UID.
        """
        held = find_held(self.catalog.db, sop_instance_uid)
        if held is None:
            raise ReviewError(f"no quarantined instance {sop_instance_uid}")
        source = Source(door="review", remote=actor)
        return self._run(source, lambda: self._release(held, source, actor))

    def _run(
        self, source: Source, steps: Callable[[], IngestResult], *, log_failure: bool = True
    ) -> IngestResult:
        """Run ``steps``, turn refusals and bugs into a result, then log it and tell the
        listeners (after the commit: they can no longer change it)."""
        started = time.perf_counter()
        try:
            result = steps()
        except _RejectedError as rejection:
            result = IngestResult(rejection.outcome, source, reason=rejection.reason)
        except Exception as exc:  # a bug: refuse the instance, keep the node running
            log.error(
                "internal error while ingesting from %s: %s\n%s",
                source.remote,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            result = IngestResult(
                Outcome.FAILED_INTERNAL, source, reason=f"internal error ({type(exc).__name__})"
            )
        result = replace(result, seconds=time.perf_counter() - started)
        if log_failure or result.outcome.success:
            self._log(result)
        for listener in self.listeners:
            try:
                listener(result)
            except Exception:
                log.exception("ingest listener %r failed", listener)
        return result

    def _accept(self, stream: Received, source: Source, expected: Expected | None) -> IngestResult:
        received = stream.parse()
        validate(received, expected)
        projects, new_study_projects = self.projects.projects_for(
            door=source.door,
            calling_aet=source.calling_aet,
            called_aet=source.called_aet,
            attribute=lambda keyword: text_of(received, keyword),
            owners=source.projects,
        )
        try:
            deidentified = self.deid.deidentify(received)
        except DeidRejectedError as exc:
            raise _RejectedError(Outcome.REJECTED_DEID, str(exc)) from exc
        dataset = deidentified.dataset
        data = stream.encode(dataset, deidentified.changed)
        result = _result(dataset, source, data.size)
        existing = self._find(result)
        # nothing stored under this UID (the usual case) and the file in memory: the blob
        # will be kept, so its write starts now and overlaps the record and content hash (a
        # spooled one is not: the hash reads its deferred values from the same spool)
        early = (
            EarlyBlob(self.blobs, data.store)
            if existing is None and stream.deferred is None
            else None
        )
        try:
            record = replace(
                _record(dataset, result, deidentified.method, deidentified.flag),
                projects=projects,
                new_study_projects=new_study_projects,
            )
            content = content_sha256(dataset, record.metadata_json, stream.deferred)
            if existing is not None and self._already_holds(result, existing, content, projects):
                return replace(result, outcome=Outcome.DUPLICATE)
            blob = data.store(self.blobs) if early is None else early.result()
        except StorageError as exc:
            raise _RejectedError(
                Outcome.FAILED_STORAGE, f"storage failure: {exc.strerror}"
            ) from exc
        except BaseException:
            if early is not None:
                early.discard()
            raise
        if deidentified.quarantine:
            return self._hold(result, record, blob, content, deidentified.flag or "held for review")
        return self._index(result, record, blob, content)

    def _release(self, held: Held, source: Source, actor: str) -> IngestResult:
        with self.blobs.open(held.blob_key) as stream:
            data = stream.read()
        dataset = parse(data)
        result = _result(dataset, source, len(data))
        new_study_projects = held.new_study_projects
        if not (held.projects or new_study_projects):  # held before projects existed
            new_study_projects = self.projects.default_only
        record = replace(
            _record(dataset, result, held.method, held.reason),
            projects=held.projects,
            new_study_projects=new_study_projects,
        )
        blob = BlobRef(key=held.blob_key, sha256=held.sha256, size=held.size)
        content = content_sha256(dataset, record.metadata_json)
        return self._index(result, record, blob, content, released_by=actor)

    def _find(self, result: IngestResult) -> Existing | None:
        """What the catalog stores under the instance's SOP Instance UID, if anything."""
        assert result.sop_instance_uid is not None
        try:
            return self.catalog.find(result.sop_instance_uid)
        except SQLAlchemyError as exc:
            raise _catalog_failure(exc) from exc

    def _already_holds(
        self, result: IngestResult, existing: Existing, content: str, projects: tuple[str, ...]
    ) -> bool:
        """The dedupe step: whether ``existing`` (the catalog's instance of this SOP
        Instance UID) has this content (as its current version or one it replaced). Its
        study joins ``projects`` then (the same study sent for another project)."""
        if existing.content_sha256 is None:  # indexed before content hashes were recorded
            try:
                with self.blobs.open(existing.blob_key) as stream:
                    stored = parse(stream.read())
            except (BlobNotFoundError, OSError, _RejectedError):
                return False  # its blob is missing or unreadable: this copy replaces it
            uids = _result(stored, result.source, 0)
            same = content_sha256(stored, _metadata_json(stored, uids)) == content
        else:
            same = existing.has_content(content)
        if same:
            try:
                self.catalog.join_projects(existing.study_pk, projects)
            except SQLAlchemyError as exc:
                raise _catalog_failure(exc) from exc
        return same

    def _index(
        self,
        result: IngestResult,
        record: InstanceRecord,
        blob: BlobRef,
        content: str,
        *,
        released_by: str | None = None,
    ) -> IngestResult:
        """The index step: one catalog transaction, then the blob it made obsolete goes.

        A blob stored for this call is removed when indexing fails (Orthanc's order and
        undo); a released one belongs to its quarantine row, which stays.
        """
        try:
            indexed = self.catalog.index(
                record,
                blob,
                door=result.source.door,
                aet=result.source.calling_aet,
                content_sha256=content,
                released_by=released_by,
            )
        except Exception as exc:
            if released_by is None:
                self.blobs.remove(blob.key)  # undo: nothing half-written stays behind
            if isinstance(exc, SQLAlchemyError):
                raise _catalog_failure(exc) from exc
            raise
        if indexed.obsolete_blob_key:
            self.blobs.remove(indexed.obsolete_blob_key)
        outcome = {
            IndexOutcome.NEW: Outcome.STORED,
            IndexOutcome.REPLACED: Outcome.REPLACED,
            IndexOutcome.SAME: Outcome.DUPLICATE,
        }[indexed.outcome]
        return replace(result, outcome=outcome)

    def _hold(
        self,
        result: IngestResult,
        record: InstanceRecord,
        blob: BlobRef,
        content: str,
        reason: str,
    ) -> IngestResult:
        """Store outside the index (quarantine): durable, invisible to queries until review."""
        try:
            held = self.catalog.quarantine(
                record,
                blob,
                reason=reason,
                door=result.source.door,
                aet=result.source.calling_aet,
                content_sha256=content,
            )
        except Exception as exc:
            self.blobs.remove(blob.key)
            if isinstance(exc, SQLAlchemyError):
                raise _catalog_failure(exc) from exc
            raise
        if held.obsolete_blob_key:
            self.blobs.remove(held.obsolete_blob_key)
        log.info("quarantined %s: %s", result.sop_instance_uid, reason)
        outcome = Outcome.DUPLICATE if held.outcome is QuarantineOutcome.SAME else Outcome.STORED
        return replace(result, outcome=outcome, quarantined=True)

    def _log(self, result: IngestResult) -> None:
        if result.outcome.success:
            log.debug(
                "%s %s from %s (%s) in %.1f ms",
                result.outcome.value,
                result.sop_instance_uid,
                result.source.calling_aet or result.source.door,
                result.source.remote,
                result.seconds * 1000,
            )
        else:
            log.warning(
                "%s from %s (%s): %s",
                result.outcome.value,
                result.source.calling_aet or result.source.door,
                result.source.remote,
                result.reason,
            )


class _TagOrderGuard:
    """Stops pydicom reading bytes that are not a data set.

    pydicom reads whatever follows a file meta as elements: 20 MB of zeros are 2.5 million
    empty elements and 12 s of CPU, all under the GIL, so one such upload would stall every
    door. The tags of a data set ascend (PS3.5 7.1); past a few that do not (pydicom itself
    re-reads the first element when it corrects the VR encoding), the stream is refused.
    """

    limit = 16

    def __init__(self) -> None:
        self.previous = -1
        self.disorder = 0

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag <= self.previous:
            self.disorder += 1
            if self.disorder > self.limit:
                raise _RejectedError(
                    Outcome.REJECTED_INVALID, "malformed DICOM: element tags out of order"
                )
        self.previous = tag
        return False  # never stop early: the whole data set is read


def _command_flood(stream: BinaryIO) -> bool:
    """Whether the stream holds more command elements (group 0000) than any file does.

    pydicom reads every group 0000 element after the file meta as a command set before the
    data set, without a bound and out of :class:`_TagOrderGuard`'s reach: zeros after a
    file meta read that way too.
    """
    prefix = stream.read(_META_PEEK)
    stream.seek(0)
    if group_after_meta(prefix) not in (None, 0):
        return False  # the common case, read without pydicom: a data set follows the meta
    try:
        if read_preamble(stream, force=False) is None:
            return False
        _read_file_meta_info(stream)  # pydicom 3.0's own reader (its public one takes a path)
        elements = data_element_generator(stream, is_implicit_VR=True, is_little_endian=True)
        for count, element in enumerate(elements):
            if element.tag.group != 0:
                return False
            if count >= _TagOrderGuard.limit:
                return True
    except Exception:
        return False  # the parse says what is wrong
    return False


def parse(raw: bytes) -> Dataset:
    """Decode a DICOM Part 10 stream; raise ``_Rejected`` with a reason fit for the peer."""
    return parse_stream(BytesIO(raw), len(raw))


def parse_stream(stream: BinaryIO, length: int, defer_size: int | None = None) -> Dataset:
    """:func:`parse` of a seekable file of ``length`` bytes; values longer than
    ``defer_size`` are left in it (pydicom's deferred read: a header and an offset)."""
    if _command_flood(stream):
        raise _RejectedError(
            Outcome.REJECTED_INVALID, "malformed DICOM: command elements where the data set is"
        )
    try:
        stream.seek(0)
        dataset = read_partial(stream, stop_when=_TagOrderGuard(), defer_size=defer_size)
    except _RejectedError:
        raise
    except InvalidDicomError:
        raise _RejectedError(
            Outcome.REJECTED_INVALID, "not a DICOM file (no DICM prefix or file meta)"
        ) from None
    except RecursionError:
        raise _RejectedError(
            Outcome.REJECTED_INVALID, "malformed DICOM: sequences nested too deeply"
        ) from None
    except Exception as exc:
        raise _RejectedError(
            Outcome.REJECTED_INVALID, f"malformed DICOM ({type(exc).__name__})"
        ) from None
    if str(dataset.file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
        raise _RejectedError(
            Outcome.REJECTED_INVALID, "a DICOMDIR is a media index, not an instance"
        )
    if _is_truncated(dataset, length):
        raise _RejectedError(Outcome.REJECTED_INVALID, "malformed DICOM: the data set is truncated")
    return dataset


def _is_truncated(dataset: Dataset, stream_length: int) -> bool:
    """Whether the stream ends before the data set's last element does.

    pydicom reads a short last value without complaint, and drops an element whose
    undefined-length value has no delimiter; either way the last element it kept does not
    end where the stream ends. (A deflated data set is read from an inflated copy, whose
    offsets say nothing about the stream.)
    """
    if dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False
    tags = list(dataset.keys())
    if not tags:
        return True
    last = element_of(dataset, tags[-1])
    if not isinstance(last, RawDataElement):
        return False  # already decoded (a sequence): pydicom checked its delimiters
    if last.value is None and last.length == _UNDEFINED_LENGTH:
        return False  # deferred: pydicom found its delimiter (or refused the stream)
    if last.length == _UNDEFINED_LENGTH:
        end = last.value_tell + len(last.value or b"") + 8  # + the delimiter item
    else:
        end = last.value_tell + last.length
    return end != stream_length


def validate(dataset: Dataset, expected: Expected | None) -> None:
    """Refuse data sets the catalog cannot index, whose pixel data cannot hold their image,
    or that contradict their request."""
    if "TransferSyntaxUID" not in dataset.file_meta:
        raise _RejectedError(Outcome.REJECTED_INVALID, "file meta has no Transfer Syntax UID")
    for keyword in _REQUIRED_UIDS:
        try:
            value = str(dataset.get(keyword, "") or "").strip("\0 ")
        except Exception:
            value = ""
        if not value:
            raise _RejectedError(Outcome.REJECTED_INVALID, f"{keyword} is missing")
        if len(value) > 64 or not _UID.match(value):
            raise _RejectedError(Outcome.REJECTED_INVALID, f"{keyword} is not a valid UID")
    if problem := pixel_data_problem(dataset):
        raise _RejectedError(Outcome.REJECTED_INVALID, problem)
    if expected is None:
        return
    if expected.sop_class_uid and expected.sop_class_uid != dataset.SOPClassUID:
        raise _RejectedError(
            Outcome.REJECTED_MISMATCH, "SOP Class UID differs from the C-STORE request"
        )
    if expected.sop_instance_uid and expected.sop_instance_uid != dataset.SOPInstanceUID:
        raise _RejectedError(
            Outcome.REJECTED_MISMATCH, "SOP Instance UID differs from the C-STORE request"
        )
    if expected.study_instance_uid and expected.study_instance_uid != dataset.StudyInstanceUID:
        raise _RejectedError(
            Outcome.REJECTED_MISMATCH, "Study Instance UID differs from the study of the request"
        )


def _result(dataset: Dataset, source: Source, size: int) -> IngestResult:
    """A result naming the instance by its stored UIDs (the outcome is filled in later)."""
    uids = {keyword: str(dataset[keyword].value).strip("\0 ") for keyword in _REQUIRED_UIDS}
    return IngestResult(
        Outcome.STORED,
        source,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        size=size,
    )


def _record(
    dataset: Dataset, result: IngestResult, method: str | None, flag: str | None
) -> InstanceRecord:
    """What the catalog indexes of ``dataset``, with how it was de-identified."""
    record = extract(dataset, _metadata_json(dataset, result))
    if method or flag:
        record = replace(
            record, instance=replace(record.instance, deid_method=method, deid_flag=flag)
        )
    return record


def _metadata_json(dataset: Dataset, uids: IngestResult) -> str:
    """The DICOM JSON of ``dataset``, whose stored UIDs ``uids`` names."""
    assert uids.study_instance_uid and uids.series_instance_uid and uids.sop_instance_uid
    try:
        return to_dicom_json(
            dataset, uids.study_instance_uid, uids.series_instance_uid, uids.sop_instance_uid
        )
    except RecursionError:
        raise _RejectedError(
            Outcome.REJECTED_INVALID, "malformed DICOM: sequences nested too deeply"
        ) from None


def _catalog_failure(exc: SQLAlchemyError) -> _RejectedError:
    return _RejectedError(Outcome.FAILED_INDEX, f"catalog unavailable ({type(exc).__name__})")
