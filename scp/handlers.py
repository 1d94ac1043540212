"""Thin DIMSE event handlers: turn the wire into ``(bytes, Source)`` and call the core."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from ingest import Expected, Ingestor, Source
from ingest.spooled import Spooled
from scp import receive
from scp.audit import DimseAudit
from scp.peers import Peers, log_rejection
from scp.status import store_response
from scp.tls import is_tls

log = logging.getLogger(__name__)


def source_of(assoc: Association, projects: tuple[str, ...] = ()) -> Source:
    """Where an association comes from (the per-connection session of dcm4chee);
    ``projects`` are those its calling AE title's new studies join (``scp.peers``)."""
    requestor = assoc.requestor
    # the AE title the peer called (its A-ASSOCIATE-RQ): acceptor.ae_title is the node's own
    request = requestor.primitive
    return Source(
        door="dimse",
        remote=f"{requestor.address}:{requestor.port}",
        calling_aet=requestor.ae_title,
        called_aet=request.called_ae_title if request is not None else assoc.acceptor.ae_title,
        projects=projects,
    )


def handle_echo(event: Event) -> int:
    return 0x0000


def handle_store(event: Event, ingestor: Ingestor, peers: Peers) -> Dataset:
    request = cast(C_STORE, event.request)
    source = source_of(event.assoc, peers.owned_projects(event.assoc.requestor.ae_title))
    expected = Expected(
        sop_class_uid=str(request.AffectedSOPClassUID or "") or None,
        sop_instance_uid=str(request.AffectedSOPInstanceUID or "") or None,
    )
    buffer = receive.take(_dataset_path(event))
    if buffer is None:  # receive.install() not called: pynetdicom held it in memory
        return store_response(ingestor.accept(event.encoded_dataset(), source, expected))
    try:
        if buffer.spool is not None:
            result = ingestor.accept_received(Spooled(buffer.spool), source, expected)
        else:
            result = ingestor.accept(buffer.getvalue(), source, expected)
    finally:
        buffer.close()  # the spool goes whatever the outcome (an exception included)
    return store_response(result)


def _dataset_path(event: Event) -> Path | None:
    try:
        return event.dataset_path
    except AttributeError:
        return None


def handle_accepted(event: Event, audit: DimseAudit) -> None:
    source = source_of(event.assoc)
    tls = ", TLS" if is_tls(event.assoc) else ""
    log.info("association accepted from %s (%s%s)", source.calling_aet, source.remote, tls)
    audit.association(event.assoc)


# A-ASSOCIATE-RJ (result source, reason/diagnostic) -> why, in words (PS3.8 9.3.4), for the
# rejections pynetdicom makes itself (those of scp.peers log their own reason)
_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognized",
    (0x01, 0x07): "called AE title is not this node's (ae_title, require_called_aet)",
    (0x02, 0x01): "no reason given (ACSE, e.g. user identity refused)",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "no free association slot",
}


def handle_rejected(event: Event, audit: DimseAudit) -> None:
    """``evt.EVT_REJECTED`` (pynetdicom's own rejections): log who and the reason."""
    answer = event.assoc.acceptor.primitive
    reason = "unknown reason"
    if answer is not None and answer.result_source is not None:
        key = (answer.result_source, answer.diagnostic)
        reason = _REJECT_REASONS.get(key, f"source {key[0]}, reason {key[1]}")  # type: ignore[arg-type]
    log_rejection(event.assoc, reason, transient=answer is not None and answer.result == 0x02)
    audit.association(event.assoc, refused=reason)


def handle_released(event: Event) -> None:
    log.info("association with %s released", source_of(event.assoc).remote)


def handle_aborted(event: Event) -> None:
    log.warning("association with %s aborted", source_of(event.assoc).remote)


def handle_closed(event: Event) -> None:
    """``evt.EVT_CONN_CLOSE``: drop the spool of a data set cut off mid-transfer."""
    receive.discard_partial(event.assoc)
