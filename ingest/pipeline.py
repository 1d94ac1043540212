"""The one pipeline every door uses: validate -> de-identify -> dedupe -> store -> index."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy.exc import SQLAlchemyError

from catalog import CatalogWriter, IndexOutcome, InstanceRecord, extract, to_dicom_json
from catalog.quarantine import QuarantineOutcome
from deid import Deidentifier, DeidRejectedError
from ingest.encoding import encode
from ingest.model import Expected, IngestResult, Outcome, Source
from ingest.pixeldata import pixel_data_problem
from storage import BlobRef, BlobStore, StorageError

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF

ResultListener = Callable[[IngestResult], None]


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
    """

    def __init__(
        self,
        *,
        deid: Deidentifier,
        blobs: BlobStore,
        catalog: CatalogWriter,
        listeners: tuple[ResultListener, ...] = (),
    ) -> None:
        self.deid = deid
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
        started = time.perf_counter()
        try:
            result = self._accept(raw, source, expected)
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

    def _accept(self, raw: bytes, source: Source, expected: Expected | None) -> IngestResult:
        received = parse(raw)
        validate(received, expected)
        try:
            deidentified = self.deid.deidentify(received)
        except DeidRejectedError as exc:
            raise _RejectedError(Outcome.REJECTED_DEID, str(exc)) from exc
        dataset = deidentified.dataset
        data = encode(dataset, raw) if deidentified.changed else raw

        uids = _stored_uids(dataset)
        result = IngestResult(
            Outcome.STORED,
            source,
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            size=len(data),
        )
        try:
            existing = self.catalog.find(uids["SOPInstanceUID"])
        except SQLAlchemyError as exc:
            raise _catalog_failure(exc) from exc
        # Hash only to compare with a stored version; the blob store hashes what it writes.
        if existing is not None and existing.sha256 == hashlib.sha256(data).hexdigest():
            return replace(result, outcome=Outcome.DUPLICATE)

        record = extract(
            dataset,
            _metadata_json(
                dataset,
                uids["StudyInstanceUID"],
                uids["SeriesInstanceUID"],
                uids["SOPInstanceUID"],
            ),
        )
        if deidentified.method or deidentified.flag:
            record = replace(
                record,
                instance=replace(
                    record.instance,
                    deid_method=deidentified.method,
                    deid_flag=deidentified.flag,
                ),
            )
        try:
            blob = self.blobs.put(data)
        except StorageError as exc:
            raise _RejectedError(
                Outcome.FAILED_STORAGE, f"storage failure: {exc.strerror}"
            ) from exc
        if deidentified.quarantine:
            return self._hold(result, record, blob, deidentified.flag or "held for review")
        try:
            indexed = self.catalog.index(record, blob, door=source.door, aet=source.calling_aet)
        except Exception as exc:
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
        self, result: IngestResult, record: InstanceRecord, blob: BlobRef, reason: str
    ) -> IngestResult:
        """Store outside the index (quarantine): durable, invisible to queries until review."""
        try:
            held = self.catalog.quarantine(
                record, blob, reason=reason, door=result.source.door, aet=result.source.calling_aet
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
        return replace(result, outcome=outcome)

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


def parse(raw: bytes) -> Dataset:
    """Decode a DICOM Part 10 stream; raise ``_Rejected`` with a reason fit for the peer."""
    try:
        dataset = dcmread(BytesIO(raw))
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
    if _is_truncated(dataset, len(raw)):
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
    last = dataset.get_item(tags[-1])
    if not isinstance(last, RawDataElement):
        return False  # already decoded (a sequence): pydicom checked its delimiters
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


def _stored_uids(dataset: Dataset) -> dict[str, str]:
    return {keyword: str(dataset[keyword].value).strip("\0 ") for keyword in _REQUIRED_UIDS}


def _metadata_json(dataset: Dataset, study: str, series: str, sop: str) -> str:
    try:
        return to_dicom_json(dataset, study, series, sop)
    except RecursionError:
        raise _RejectedError(
            Outcome.REJECTED_INVALID, "malformed DICOM: sequences nested too deeply"
        ) from None


def _catalog_failure(exc: SQLAlchemyError) -> _RejectedError:
    return _RejectedError(Outcome.FAILED_INDEX, f"catalog unavailable ({type(exc).__name__})")
