"""Send stored instances to a configured DICOM peer as a C-STORE SCU (``pacsnode send``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from catalog import StoredInstance
from config import DicomDestination
from scp.outbound import load_dataset, on_connection_open, storage_contexts
from storage import BlobStore

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The destination could not be reached or refused the association; nothing was sent."""


@dataclass
class SendReport:
    completed: int = 0
    warnings: int = 0
    failed: list[str] = field(default_factory=list)
    """Stored SOP Instance UIDs that were not sent."""


def send_instances(
    instances: Sequence[StoredInstance],
    destination: DicomDestination,
    blobs: BlobStore,
    *,
    calling_aet: str,
    timeout: float,
    on_sent: Callable[[StoredInstance], None] | None = None,
) -> SendReport:
    """Send ``instances`` as stored (no transcoding) over one association.

    Raises :class:`SendError` when no association could be established; a failure of one
    instance is counted in the report and the others are still sent.
    """
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = storage_contexts(instances)
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)],
    )
    where = f"{destination.ae_title} ({destination.host}:{destination.port})"
    if not assoc.is_established:
        reason = "refused the association" if assoc.is_rejected else "could not be reached"
        log.warning("send to %s failed: the destination %s", where, reason)
        raise SendError(f"{where} {reason}")
    report = SendReport()
    try:
        for instance in instances:
            if not assoc.is_established:
                report.failed.append(instance.sop_instance_uid)
            else:
                _send_one(assoc, blobs, instance, report, where)
            if on_sent is not None:
                on_sent(instance)
    finally:
        if assoc.is_established:
            assoc.release()
    log.info(
        "sent %d instances to %s (%d with warnings, %d failed)",
        report.completed + report.warnings,
        where,
        report.warnings,
        len(report.failed),
    )
    return report


def _send_one(
    assoc: Association, blobs: BlobStore, instance: StoredInstance, report: SendReport, where: str
) -> None:
    uid = instance.sop_instance_uid
    try:
        dataset = load_dataset(blobs, instance)
    except Exception as exc:
        log.error("stored instance %s cannot be read (%s)", uid, type(exc).__name__)
        report.failed.append(uid)
        return
    try:
        status = assoc.send_c_store(dataset)
    except ValueError:  # no accepted context for its SOP class and transfer syntax
        log.warning("%s accepts no presentation context for instance %s", where, uid)
        report.failed.append(uid)
        return
    if "Status" not in status:  # no answer: timeout or the association was aborted
        report.failed.append(uid)
        return
    category = code_to_category(int(status.Status))
    if category == "Success":
        report.completed += 1
    elif category == "Warning":
        report.warnings += 1
    else:
        log.warning("%s refused instance %s (0x%04X)", where, uid, int(status.Status))
        report.failed.append(uid)
