"""Storage Commitment Push Model SCP (PS3.4 Annex J): a thin door over
:func:`ingest.check_commitment`.

The N-ACTION (Action Type 1) is answered as soon as the request is well formed; the check and
the N-EVENT-REPORT follow on a worker thread, so checking a large study never holds up the
association. The report goes on the requesting association while the modality keeps it open
(``qr.commitment_same_association``); otherwise, or when that fails, on a new association to
the calling AE title's entry of ``qr.destinations``, proposing the SCP role for the SOP class
(PS3.4 J.3.3.1.3). The modality's UIDs (Transaction UID, its SOP Instance UIDs) are held in
memory for the transaction only: log lines name the calling AE title and counts.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Final, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from pynetdicom.status import code_to_category

from config import QueryRetrieveSettings, Settings
from ingest import Ingestor, Source
from ingest.commitment import CommitmentResult, Reference, check_commitment
from scp.handlers import source_of
from scp.outbound import on_connection_open
from scp.peers import Peers

log = logging.getLogger(__name__)

REQUEST_STORAGE_COMMITMENT: Final = 1
"""The one Action Type ID of the Push Model (PS3.4 J.3.2.1.1)."""

_ERROR_COMMENT_LENGTH = 64  # LO


class ActionStatus(enum.IntEnum):
    """N-ACTION statuses of the Storage Commitment SCP (PS3.4 J.3.2.1.1, PS3.7 C)."""

    SUCCESS = 0x0000
    NO_SUCH_SOP_INSTANCE = 0x0112  # not the well-known Storage Commitment SOP Instance
    INVALID_ARGUMENT_VALUE = 0x0115  # Action Information missing, undecodable or incomplete
    NO_SUCH_ACTION = 0x0123  # an Action Type ID other than 1
    NOT_AUTHORISED = 0x0124  # the result could never be reported to this AE title


class EventType(enum.IntEnum):
    """Event Type ID of the N-EVENT-REPORT (PS3.4 J.3.3.1.1)."""

    ALL_COMMITTED = 1
    FAILURES_EXIST = 2


class RequestError(ValueError):
    """An N-ACTION that cannot be served; the comment never quotes a value of the request."""

    def __init__(self, status: ActionStatus, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def parse_request(event: Event) -> tuple[str, list[Reference]]:
    """The Transaction UID and the referenced instances of a Storage Commitment N-ACTION.

    Raises :class:`RequestError` when the request is not one to serve.
    """
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        raise RequestError(
            ActionStatus.NO_SUCH_ACTION, "Action Type ID must be 1 (request storage commitment)"
        )
    request = cast(N_ACTION, event.request)
    if str(request.RequestedSOPInstanceUID or "") != StorageCommitmentPushModelInstance:
        raise RequestError(
            ActionStatus.NO_SUCH_SOP_INSTANCE,
            f"Requested SOP Instance must be {StorageCommitmentPushModelInstance}",
        )
    try:
        information = event.action_information
        transaction_uid = _text(information, "TransactionUID")
        references = [
            Reference(_text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID"))
            for item in information.get("ReferencedSOPSequence") or []
        ]
    except Exception:
        raise RequestError(
            ActionStatus.INVALID_ARGUMENT_VALUE, "Action Information cannot be decoded"
        ) from None
    if not transaction_uid:
        raise RequestError(ActionStatus.INVALID_ARGUMENT_VALUE, "Transaction UID is missing")
    if not references:
        raise RequestError(
            ActionStatus.INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence is missing or empty"
        )
    if not all(ref.sop_class_uid and ref.sop_instance_uid for ref in references):
        raise RequestError(
            ActionStatus.INVALID_ARGUMENT_VALUE, "a Referenced SOP Sequence item lacks a UID"
        )
    return transaction_uid, references


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip("\0 ")


def event_report(transaction_uid: str, result: CommitmentResult) -> tuple[EventType, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information: the sender's own UIDs back,
    committed ones in the Referenced SOP Sequence, the others in the Failed SOP Sequence with
    their Failure Reason (PS3.4 J.3.3.1.1)."""
    report = Dataset()
    report.TransactionUID = transaction_uid
    if result.committed:
        report.ReferencedSOPSequence = [_item(ref) for ref in result.committed]
    if result.failed:
        failed = []
        for ref, reason in result.failed:
            item = _item(ref)
            item.FailureReason = int(reason)
            failed.append(item)
        report.FailedSOPSequence = failed
    event_type = EventType.FAILURES_EXIST if result.failed else EventType.ALL_COMMITTED
    return event_type, report


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def _status(status: ActionStatus, comment: str = "") -> Dataset:
    response = Dataset()
    response.Status = int(status)
    if comment:
        response.ErrorComment = comment[:_ERROR_COMMENT_LENGTH]
    return response


def _send_report(assoc: Association, event_type: EventType, report: Dataset) -> bool:
    """Send the N-EVENT-REPORT; whether the peer answered it with Success."""
    status, _ = assoc.send_n_event_report(
        report, event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
    )
    return _delivered(status)


def _delivered(status: Dataset | None) -> bool:
    code = getattr(status, "Status", None)
    return code is not None and code_to_category(int(code)) == "Success"


class StorageCommitmentSCP:
    """``evt.EVT_N_ACTION`` for the Storage Commitment Push Model, with the workers that
    check and report.

    Parameters
    ----------
    ingestor
        The pipeline that stored the instances (its catalog, blobs and de-identifier).
    settings
        The node's AE title and ``[qr]``: destinations and the commitment settings.
    peers
        The projects each calling AE title sees: an instance of another project is one the
        archive does not hold, for that AE.
    workers
        Checks and reports running at once; further transactions wait their turn.
    """

    def __init__(
        self, ingestor: Ingestor, settings: Settings, peers: Peers, workers: int = 2
    ) -> None:
        self.ingestor = ingestor
        self.peers = peers
        self.ae_title = settings.ae_title
        self.qr: QueryRetrieveSettings = settings.qr
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="commitment")
        # One report at a time on requesting associations: pynetdicom pauses the association's
        # reactor for each request it sends, and two senders would take each other's answers.
        self._reporting = threading.Lock()

    def handle_n_action(self, event: Event) -> tuple[Dataset, None]:
        """Accept a well-formed request and queue its check and report."""
        source = source_of(event.assoc)
        try:
            transaction_uid, references = parse_request(event)
            if not self.qr.commitment_same_association and not self._has_destination(source):
                raise RequestError(
                    ActionStatus.NOT_AUTHORISED, "no destination configured for this AE title"
                )
        except RequestError as exc:
            log.warning(
                "storage commitment request from %s (%s) refused (0x%04X): %s",
                source.calling_aet,
                source.remote,
                exc.status,
                exc.comment,
            )
            return _status(exc.status, exc.comment), None
        log.info(
            "storage commitment request from %s (%s): %d instances",
            source.calling_aet,
            source.remote,
            len(references),
        )
        self._workers.submit(
            self._commit, event.assoc, source, transaction_uid, references, time.monotonic()
        )
        return _status(ActionStatus.SUCCESS), None

    def _has_destination(self, source: Source) -> bool:
        return self.qr.destination(source.calling_aet or "") is not None

    def _commit(
        self,
        assoc: Association,
        source: Source,
        transaction_uid: str,
        references: list[Reference],
        answered_at: float,
    ) -> None:
        try:
            projects = self.peers.projects(source.calling_aet or "")
            result = check_commitment(self.ingestor, references, source, projects=projects)
            event_type, report = event_report(transaction_uid, result)
            if self.qr.commitment_same_association and self._report_on(
                assoc, event_type, report, answered_at
            ):
                log.info(
                    "storage commitment result (event type %d) reported to %s on its association",
                    event_type,
                    source.calling_aet,
                )
                return
            self._report_anew(source, event_type, report)
        except Exception as exc:  # a bug: the modality gets no report and will ask again
            log.error(
                "storage commitment for %s (%s) failed: %s\n%s",
                source.calling_aet,
                source.remote,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )

    def _report_on(
        self, assoc: Association, event_type: EventType, report: Dataset, answered_at: float
    ) -> bool:
        """Report on the requesting association; False when it is closed or the report was
        not answered with Success within ``qr.commitment_timeout``.

        Not before ``qr.commitment_delay`` after the N-ACTION was answered: a modality that
        releases the association just as the report goes out never answers it (pynetdicom
        ignores it during the release), while the node, waiting for that answer, cannot
        answer the release; both would wait until the timeout aborts the association.
        """
        pause = answered_at + self.qr.commitment_delay - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        with self._reporting:
            if not assoc.is_established:
                return False
            usual = assoc.dimse_timeout
            assoc.dimse_timeout = self.qr.commitment_timeout
            try:
                return _send_report(assoc, event_type, report)
            except (RuntimeError, ValueError):  # released meanwhile
                return False
            finally:
                assoc.dimse_timeout = usual

    def _report_anew(self, source: Source, event_type: EventType, report: Dataset) -> None:
        """Report on a new association to the calling AE title's destination."""
        destination = self.qr.destination(source.calling_aet or "")
        if destination is None:
            log.warning(
                "storage commitment result for %s (%s) not reported: its association is closed "
                "and qr.destinations has no entry for that AE title",
                source.calling_aet,
                source.remote,
            )
            return
        where = f"{destination.ae_title} ({destination.host}:{destination.port})"
        ae = AE(ae_title=self.ae_title)
        ae.connection_timeout = self.qr.commitment_timeout
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.qr.commitment_timeout
        ae.add_requested_context(
            StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
            evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)],
        )
        if not assoc.is_established:
            reason = "refused the association" if assoc.is_rejected else "could not be reached"
            log.warning("storage commitment result not reported: %s %s", where, reason)
            return
        try:
            delivered = _send_report(assoc, event_type, report)
        except ValueError:  # the destination accepted no context for the SOP class
            delivered = False
        finally:
            if assoc.is_established:
                assoc.release()
        if delivered:
            log.info(
                "storage commitment result (event type %d) reported to %s on a new association",
                event_type,
                where,
            )
        else:
            log.warning(
                "storage commitment result not reported: %s did not answer it with Success",
                where,
            )
