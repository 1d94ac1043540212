"""C-FIND: a thin door over :mod:`catalog.query`, the matching QIDO-RS uses.

The request's Identifier becomes ``parse_query`` keys (keyword -> text, as QIDO-RS passes
them), each answer row (DICOM JSON) becomes a data set holding the keys the Identifier asked
for, in UTF-8 (``ISO_IR 192``: the catalog holds decoded text, whatever the character set the
instances arrived in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError

from catalog import Database
from catalog.query import (
    ATTRIBUTES,
    QueryError,
    QueryLevel,
    parse_query,
    resolve_key,
    run_query,
    study_uids,
)
from config import Settings
from scp.audit import DimseAudit
from scp.handlers import source_of
from scp.outbound import set_nodelay
from scp.peers import Peers
from scp.retrieve import PATIENT_ROOT_MODELS, IdentifierError, query_retrieve_level
from scp.status import QueryRetrieveStatus, status_dataset

log = logging.getLogger(__name__)

RESPONSE_CHARACTER_SET = "ISO_IR 192"
_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_NOT_KEYS = frozenset({_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _RETRIEVE_AE_TITLE})
_LEVEL_OF = {attribute.tag: attribute.level for attribute in ATTRIBUTES}
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


@dataclass(frozen=True)
class FindRequest:
    """A C-FIND Identifier, read: the level, the matching keys, the keys to return."""

    level: QueryLevel
    keys: dict[str, str | list[str]]
    returned: tuple[tuple[BaseTag, str], ...]
    """Each requested key with its VR, in the Identifier's order."""
    sequences: tuple[str, ...]
    """Sequence keys asked for as return keys (filled from the stored JSON)."""


def read_identifier(identifier: Dataset, patient_root: bool) -> FindRequest:
    """The query a C-FIND Identifier asks; raises :class:`IdentifierError` (no value quoted)."""
    level = QueryLevel[query_retrieve_level(identifier, patient_root)]
    keys: dict[str, str | list[str]] = {}
    returned: list[tuple[BaseTag, str]] = []
    sequences: list[str] = []
    tags = list(identifier.keys())  # iterating a Dataset itself decodes every element
    for tag in tags:
        if tag in _NOT_KEYS or tag.element == 0x0000 or tag.is_private_creator:
            continue
        try:
            element = identifier[tag]
        except Exception:
            raise IdentifierError(
                QueryRetrieveStatus.UNABLE_TO_PROCESS, f"{tag} cannot be decoded"
            ) from None
        name = element.keyword or f"{tag:08X}"
        value = _text(element)
        attribute_level = _LEVEL_OF.get(int(tag))
        if attribute_level is not None and attribute_level > level:
            if value:
                raise IdentifierError(
                    QueryRetrieveStatus.IDENTIFIER_DOES_NOT_MATCH,
                    f"{name} is below the {level.name} level",
                )
            continue  # an empty key of a lower level: nothing to match or return
        if tag.is_private or element.VR in _BINARY_VRS or element.VR == "SQ":
            if value:
                raise IdentifierError(
                    QueryRetrieveStatus.UNABLE_TO_PROCESS, f"matching on {name} is not supported"
                )
            if element.VR == "SQ" and not tag.is_private:
                sequences.append(f"{tag:08X}")
                returned.append((tag, element.VR))
            continue
        keys[name] = value
        returned.append((tag, element.VR))
    return FindRequest(level, keys, tuple(returned), tuple(sequences))


def _text(element: DataElement) -> str | list[str]:
    """An element's value as the text matching takes ("" when empty); a list for several."""
    value = element.value
    if element.VR == "SQ":
        return "x" if value and any(len(item) for item in value) else ""
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, bytes):
        return "x"  # binary: never matched on
    if isinstance(value, MultiValue | list | tuple):
        return [str(item) for item in value]
    return str(value)


def handle_find(
    event: Event, db: Database, settings: Settings, peers: Peers, audit: DimseAudit
) -> Iterator[tuple[Any, Any]]:
    """``evt.EVT_C_FIND``: answer from the catalog, one pending response per match; only
    studies of the projects the calling AE title sees match."""
    peer = source_of(event.assoc)
    started = time.perf_counter()
    patient_root = event.request.AffectedSOPClassUID in PATIENT_ROOT_MODELS
    limit = settings.qr.max_find_results
    request: FindRequest | None = None

    def refused() -> None:
        level = request.level.name if request else "?"
        audit.query(event.assoc, level, _matching(request), outcome="refused")

    try:
        request = read_identifier(event.identifier, patient_root)
        query = parse_query(request.level, request.keys, include=request.sequences, limit=limit)
        query = dataclasses.replace(query, projects=peers.projects(peer.calling_aet or ""))
        unsupported = [key for key in query.unsupported if request.keys.get(key)]
        if unsupported:
            raise IdentifierError(
                QueryRetrieveStatus.UNABLE_TO_PROCESS,
                f"matching on {unsupported[0]} is not supported",
            )
        result = run_query(db, query)
    except QueryError as exc:
        failure = _refusal(QueryRetrieveStatus.UNABLE_TO_PROCESS, str(exc), exc.key)
        log.warning("C-FIND from %s (%s) refused (0xC000): %s", peer.calling_aet, peer.remote, exc)
        refused()
        yield failure, None
        return
    except IdentifierError as exc:
        log.warning(
            "C-FIND from %s (%s) refused (0x%04X): %s",
            peer.calling_aet,
            peer.remote,
            exc.status,
            exc.comment,
        )
        refused()
        yield status_dataset(exc.status, exc.comment), None
        return
    except SQLAlchemyError as exc:
        log.error("C-FIND from %s: catalog unavailable (%s)", peer.remote, type(exc).__name__)
        refused()
        yield (
            status_dataset(
                QueryRetrieveStatus.OUT_OF_RESOURCES, f"catalog unavailable ({type(exc).__name__})"
            ),
            None,
        )
        return
    if result.more_available:
        log.warning(
            "C-FIND from %s (%s) refused (0xA700): more than %d matches",
            peer.calling_aet,
            peer.remote,
            limit,
        )
        refused()
        yield (
            status_dataset(
                QueryRetrieveStatus.OUT_OF_RESOURCES,
                f"more than {limit} matches; narrow the query",
            ),
            None,
        )
        return
    set_nodelay(event.assoc)  # measured: a one-match query took 53 ms with Nagle, 10 without
    audit.query(
        event.assoc,
        request.level.name,
        _matching(request),
        study_uids(result.rows),
        matches=len(result.rows),
    )
    for sent, row in enumerate(result.rows):
        if event.is_cancelled:
            log.info("C-FIND from %s cancelled after %d of %d", peer.remote, sent, len(result.rows))
            yield QueryRetrieveStatus.CANCEL, None
            return
        yield QueryRetrieveStatus.PENDING, _answer(row, request, settings.ae_title)
    log.info(
        "C-FIND from %s (%s): %s level, %d matches in %.1f ms",
        peer.calling_aet,
        peer.remote,
        request.level.name,
        len(result.rows),
        (time.perf_counter() - started) * 1000,
    )


def _matching(request: FindRequest | None) -> list[str]:
    """The keys a request matches on (with a value), for the audit trail."""
    return [key for key, value in request.keys.items() if value] if request else []


def _answer(row: dict[str, Any], request: FindRequest, ae_title: str) -> Dataset:
    """The response Identifier: the requested keys of one match, in UTF-8."""
    answer = Dataset()
    answer.SpecificCharacterSet = RESPONSE_CHARACTER_SET
    answer.QueryRetrieveLevel = request.level.name
    answer.RetrieveAETitle = ae_title
    for tag, vr in request.returned:
        element = row.get(f"{tag:08X}")
        if element is None:
            answer.add_new(tag, vr, None)
        elif element.get("vr") == "SQ":
            items = [Dataset.from_json(item) for item in element.get("Value", [])]
            answer.add_new(tag, "SQ", items)
        else:
            answer.add_new(tag, element.get("vr", vr), _value(element))
    return answer


def _value(element: dict[str, Any]) -> Any:
    """The pydicom value of a DICOM JSON element that is not a sequence (PS3.18 F.2)."""
    values = element.get("Value")
    if not values:
        return None
    if element.get("vr") == "PN":
        values = ["=".join(_name_groups(name)) for name in values]
    elif element.get("vr") in ("IS", "DS"):
        values = [str(value) for value in values]
    return values[0] if len(values) == 1 else values


def _name_groups(name: dict[str, str]) -> list[str]:
    groups = [name.get(part, "") for part in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return groups


def _refusal(status: QueryRetrieveStatus, comment: str, key: str) -> Dataset:
    response = status_dataset(status, comment)
    with contextlib.suppress(QueryError):  # a key that is not a tag has no element to name
        response.OffendingElement = [resolve_key(key)]
    return response
