"""C-MOVE and C-GET: thin handlers that locate instances in the catalog and send the stored
files as they are (no transcoding; they were de-identified on arrival).

pynetdicom drives both services from generators (``evt.EVT_C_MOVE`` / ``evt.EVT_C_GET``):
the move destination (C-MOVE only), then the number of sub-operations, then one
``(status, dataset)`` per instance; pynetdicom sends the C-STORE sub-operations, the pending
responses with their counts and the final status with the Failed SOP Instance UID List.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy.exc import SQLAlchemyError

from catalog import Database, RetrieveKeys, StoredInstance, locate_keys
from config import QueryRetrieveSettings
from scp.audit import DimseAudit
from scp.handlers import source_of
from scp.outbound import load_dataset, on_connection_open, set_nodelay, storage_contexts, unsendable
from scp.peers import Peers
from scp.status import QueryRetrieveStatus, status_dataset
from storage import BlobStore

log = logging.getLogger(__name__)

PATIENT_ROOT_MODELS = frozenset(
    {
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
    }
)
MAX_SUB_OPERATIONS = 65535  # the sub-operation counts are US (PS3.4 C.4.2.1.4)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PROBE_CONTEXTS = [
    build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class in (Verification, CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage)
]
"""What any storage SCP accepts, for an association that carries no instance."""


class RetrieveLevel(enum.StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


_UNIQUE_KEYS = (
    (RetrieveLevel.PATIENT, "PatientID"),
    (RetrieveLevel.STUDY, "StudyInstanceUID"),
    (RetrieveLevel.SERIES, "SeriesInstanceUID"),
    (RetrieveLevel.IMAGE, "SOPInstanceUID"),
)


class IdentifierError(ValueError):
    """The request's Identifier cannot be served; the message is fit for an Error Comment
    (it never quotes a value of the request)."""

    def __init__(self, status: QueryRetrieveStatus, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def query_retrieve_level(identifier: Dataset, patient_root: bool) -> str:
    """The Identifier's QueryRetrieveLevel (PATIENT, STUDY, SERIES or IMAGE), checked
    against the information model; raises :class:`IdentifierError` otherwise."""
    try:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:
        raise IdentifierError(
            QueryRetrieveStatus.UNABLE_TO_PROCESS, "Identifier cannot be decoded"
        ) from None
    if level not in RetrieveLevel.__members__:
        raise IdentifierError(
            QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
            "QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE",
        )
    if level == RetrieveLevel.PATIENT and not patient_root:
        raise IdentifierError(
            QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
            "PATIENT level needs the Patient Root model",
        )
    return level


def retrieve_keys(identifier: Dataset, patient_root: bool) -> RetrieveKeys:
    """The unique keys of a C-MOVE or C-GET Identifier (PS3.4 C.4.2.2.1).

    The unique key of the retrieve level is required (a list of UIDs is allowed); the keys of
    the levels above it, optional, narrow the match; a unique key below the level is refused,
    since ignoring it would send more than was asked for.
    """
    level = RetrieveLevel(query_retrieve_level(identifier, patient_root))
    depth = [lvl for lvl, _ in _UNIQUE_KEYS].index(level)
    values: dict[RetrieveLevel, tuple[str, ...]] = {}
    for index, (key_level, keyword) in enumerate(_UNIQUE_KEYS):
        found = _values(identifier, keyword)
        if index > depth and found:
            raise IdentifierError(
                QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
                f"{keyword} is below the {level} level",
            )
        if index == depth and not found:
            raise IdentifierError(
                QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
                f"{keyword} is required at the {level} level",
            )
        if index < depth and len(found) > 1:
            raise IdentifierError(
                QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
                f"{keyword} above the {level} level must be a single value",
            )
        values[key_level] = found
    return RetrieveKeys(
        patient_ids=values[RetrieveLevel.PATIENT],
        study_uids=values[RetrieveLevel.STUDY],
        series_uids=values[RetrieveLevel.SERIES],
        sop_instance_uids=values[RetrieveLevel.IMAGE],
    )


def _values(identifier: Dataset, keyword: str) -> tuple[str, ...]:
    try:
        raw = identifier.get(keyword)
    except Exception:
        raise IdentifierError(
            QueryRetrieveStatus.UNABLE_TO_PROCESS, f"{keyword} cannot be decoded"
        ) from None
    items = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    values = tuple(str(item).strip("\0 ") for item in items if item not in (None, ""))
    values = tuple(value for value in values if value)
    for value in values:
        if "*" in value or "?" in value:
            raise IdentifierError(
                QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
                f"{keyword} must not hold wildcards in a retrieve",
            )
        if keyword != "PatientID" and (len(value) > 64 or not _UID.match(value)):
            raise IdentifierError(
                QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH, f"{keyword} is not a valid UID"
            )
    return values


def _locate(event: Event, db: Database, peers: Peers) -> list[StoredInstance]:
    """The instances a C-MOVE/C-GET asks for, of the projects the calling AE title sees;
    raises :class:`IdentifierError`."""
    patient_root = event.request.AffectedSOPClassUID in PATIENT_ROOT_MODELS
    keys = retrieve_keys(event.identifier, patient_root)
    projects = peers.projects(event.assoc.requestor.ae_title)
    try:
        instances = locate_keys(db, keys, projects=projects)
    except SQLAlchemyError as exc:
        raise IdentifierError(
            QueryRetrieveStatus.CANNOT_COUNT_MATCHES,
            f"catalog unavailable ({type(exc).__name__})",
        ) from None
    if len(instances) > MAX_SUB_OPERATIONS:
        raise IdentifierError(
            QueryRetrieveStatus.CANNOT_PERFORM_SUB_OPERATIONS,
            f"more than {MAX_SUB_OPERATIONS} instances match; retrieve in parts",
        )
    return instances


def _sub_operations(
    event: Event, blobs: BlobStore, instances: list[StoredInstance], service: str
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """One pending ``(status, dataset)`` per instance; Cancel when the peer asks for it."""
    peer = source_of(event.assoc).remote
    for sent, instance in enumerate(instances):
        if event.is_cancelled:
            log.info("%s from %s cancelled after %d of %d", service, peer, sent, len(instances))
            yield QueryRetrieveStatus.CANCEL, None
            return
        try:
            dataset = load_dataset(blobs, instance)
        except Exception as exc:
            log.error(
                "%s from %s: stored instance %s cannot be read (%s)",
                service,
                peer,
                instance.sop_instance_uid,
                type(exc).__name__,
            )
            dataset = unsendable(instance)
        yield QueryRetrieveStatus.PENDING, dataset


def handle_move(
    event: Event,
    db: Database,
    blobs: BlobStore,
    qr: QueryRetrieveSettings,
    peers: Peers,
    audit: DimseAudit,
) -> Iterator[Any]:
    """``evt.EVT_C_MOVE``: send the matching instances to a configured destination."""
    peer = source_of(event.assoc)
    title = (event.move_destination or "").strip()
    destination = qr.destination(title)
    if destination is None:
        log.warning(
            "C-MOVE from %s (%s) refused: move destination %r is not configured (0xA801)",
            peer.calling_aet,
            peer.remote,
            title,
        )
        audit.retrieve(event.assoc, "C-MOVE", [], destination=title, outcome="refused")
        yield None, None
        return
    try:
        instances = _locate(event, db, peers)
    except IdentifierError as exc:
        log.warning(
            "C-MOVE from %s (%s) refused (0x%04X): %s",
            peer.calling_aet,
            peer.remote,
            exc.status,
            exc.comment,
        )
        audit.retrieve(event.assoc, "C-MOVE", [], destination=title, outcome="refused")
        # pynetdicom asks for the destination before any status: a failure can only be
        # answered once an association with the destination is open, so open a small one.
        yield destination.host, destination.port, {"contexts": _PROBE_CONTEXTS}
        yield 1
        yield status_dataset(exc.status, exc.comment), None
        return

    yield (
        destination.host,
        destination.port,
        {
            "contexts": storage_contexts(instances),
            "evt_handlers": [(evt.EVT_CONN_OPEN, on_connection_open)],
        },
    )
    log.info(
        "C-MOVE from %s (%s): %d instances to %s (%s:%s)",
        peer.calling_aet,
        peer.remote,
        len(instances),
        destination.ae_title,
        destination.host,
        destination.port,
    )
    audit.retrieve(event.assoc, "C-MOVE", instances, destination=title)
    started = False
    try:
        yield len(instances)
        started = True
        yield from _sub_operations(event, blobs, instances, "C-MOVE")
    except GeneratorExit:
        if instances and not started:
            # pynetdicom closes the handler when the destination association fails.
            log.warning(
                "C-MOVE from %s (%s): destination %s (%s:%s) refused the association or "
                "could not be reached; answered 0xA801",
                peer.calling_aet,
                peer.remote,
                destination.ae_title,
                destination.host,
                destination.port,
            )
        raise


def handle_get(
    event: Event, db: Database, blobs: BlobStore, peers: Peers, audit: DimseAudit
) -> Iterator[Any]:
    """``evt.EVT_C_GET``: send the matching instances back on the same association, over the
    storage contexts the requestor negotiated with the SCP role."""
    peer = source_of(event.assoc)
    try:
        instances = _locate(event, db, peers)
    except IdentifierError as exc:
        log.warning(
            "C-GET from %s (%s) refused (0x%04X): %s",
            peer.calling_aet,
            peer.remote,
            exc.status,
            exc.comment,
        )
        audit.retrieve(event.assoc, "C-GET", [], outcome="refused")
        yield 1
        yield status_dataset(exc.status, exc.comment), None
        return
    audit.retrieve(event.assoc, "C-GET", instances)
    set_nodelay(event.assoc)
    log.info("C-GET from %s (%s): %d instances", peer.calling_aet, peer.remote, len(instances))
    yield len(instances)
    yield from _sub_operations(event, blobs, instances, "C-GET")
