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
    return Source(
        door="dimse",
        remote=f"{requestor.address}:{requestor.port}",
        calling_aet=requestor.ae_title,
        called_aet=assoc.acceptor.ae_title,
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


def handle_rejected(event: Event) -> None:
    requestor = event.assoc.requestor
    log.warning(
        "association rejected from %r (%s:%s) to %r: AE title not allowed",
        requestor.ae_title,
        requestor.address,
        requestor.port,
        event.assoc.acceptor.ae_title,
    )


def handle_released(event: Event) -> None:
    log.info("association with %s released", source_of(event.assoc).remote)


def handle_aborted(event: Event) -> None:
    log.warning("association with %s aborted", source_of(event.assoc).remote)
