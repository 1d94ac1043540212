"""Thin DIMSE event handlers: turn the wire into ``(bytes, Source)`` and call the core."""

from __future__ import annotations

import logging
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from ingest import Expected, Ingestor, Source
from scp.status import store_response

log = logging.getLogger(__name__)


def source_of(assoc: Association) -> Source:
    """Where an association comes from (the per-connection session of dcm4chee)."""
    requestor = assoc.requestor
    # the AE title the peer called (its A-ASSOCIATE-RQ): acceptor.ae_title is the node's own
    request = requestor.primitive
    return Source(
        door="dimse",
        remote=f"{requestor.address}:{requestor.port}",
        calling_aet=requestor.ae_title,
        called_aet=request.called_ae_title if request is not None else assoc.acceptor.ae_title,
    )


def handle_echo(event: Event) -> int:
    return 0x0000


def handle_store(event: Event, ingestor: Ingestor) -> Dataset:
    request = cast(C_STORE, event.request)
    expected = Expected(
        sop_class_uid=str(request.AffectedSOPClassUID or "") or None,
        sop_instance_uid=str(request.AffectedSOPInstanceUID or "") or None,
    )
    result = ingestor.accept(event.encoded_dataset(), source_of(event.assoc), expected)
    return store_response(result)


def handle_accepted(event: Event) -> None:
    source = source_of(event.assoc)
    log.info("association accepted from %s (%s)", source.calling_aet, source.remote)


# A-ASSOCIATE-RJ (result source, reason/diagnostic) -> why, in words (PS3.8 9.3.4)
_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not allowed (allowed_calling_aets)",
    (0x01, 0x07): "called AE title is not this node's (ae_title, require_called_aet)",
    (0x02, 0x01): "no reason given (ACSE, e.g. user identity refused)",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "no free association slot (max_associations)",
}


def handle_requested(event: Event, max_associations: int) -> None:
    """Reject an association when ``max_associations`` others have already asked for one.

    Only associations whose A-ASSOCIATE-RQ arrived count: a connection that sent nothing
    (or a few bytes) holds no slot, so a flood of half-open connections cannot lock
    modalities out; the server closes those after ``acse_timeout``. (pynetdicom's own
    limit would count them, so the AE's is set out of reach.)
    """
    assoc = event.assoc
    busy = sum(
        1
        for other in assoc.ae.active_associations
        if other is not assoc
        and other.is_acceptor
        and other.requestor.primitive is not None
        and not (other.is_rejected or other.is_aborted or other.is_released)
    )
    if busy >= max_associations:
        assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, provider, local limit exceeded
        handle_rejected(event)
        assoc.kill()  # as pynetdicom does after its own rejections


def handle_rejected(event: Event) -> None:
    """Log who was refused, the AE title they asked for and the true reason."""
    assoc = event.assoc
    requestor = assoc.requestor
    request, answer = requestor.primitive, assoc.acceptor.primitive
    reason = "unknown reason"
    if answer is not None and answer.result_source is not None:
        key = (answer.result_source, answer.diagnostic)
        reason = _REJECT_REASONS.get(key, f"source {key[0]}, reason {key[1]}")  # type: ignore[arg-type]
        if answer.result == 0x02:
            reason += ", transient"
    log.warning(
        "association rejected from %r (%s:%s) to %r: %s",
        request.calling_ae_title if request is not None else requestor.ae_title,
        requestor.address,
        requestor.port,
        request.called_ae_title if request is not None else "?",
        reason,
    )


def handle_released(event: Event) -> None:
    log.info("association with %s released", source_of(event.assoc).remote)


def handle_aborted(event: Event) -> None:
    log.warning("association with %s aborted", source_of(event.assoc).remote)
