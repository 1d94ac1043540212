"""One audit record as a DICOM audit message (PS3.15 A.5): ``<AuditMessage>`` XML, UTF-8.

The mapping of each :class:`~audit.events.Action` to its DICOM event (A.5.3), the
participants and the participant objects is tabled in ``docs/audit.md`` ("DICOM audit
messages"); :data:`EVENTS` below is that table in code. Built with ``xml.etree`` (no
templating): every value is escaped, and characters XML 1.0 cannot carry are replaced.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from xml.etree import ElementTree as ET

from audit.events import Action, AuditRecord, Outcome, outcome_of
from config.audit import AuditSettings


@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName``, ``originalText``."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


LOCAL: Final = "99PACSNODE"
"""Coding scheme of the node's own codes (the event type naming each record's action)."""

# Roles of active participants (CID 402) and ID types of participant objects (CID 404).
SOURCE: Final = _dcm("110153", "Source Role ID")
DESTINATION: Final = _dcm("110152", "Destination Role ID")
DESTINATION_MEDIA: Final = _dcm("110154", "Destination Media")
MEDIA_URI: Final = _dcm("110037", "URI")
STUDY_UID: Final = _dcm("110180", "Study Instance UID")
SERIES_UID: Final = _dcm("112002", "Series Instance UID")
ACCESSION: Final = _dcm("121022", "Accession Number")
NODE_ID: Final = _dcm("110182", "Node ID")
PATIENT_NUMBER: Final = Code("2", "RFC-3881", "Patient Number")
SEARCH_CRITERIA: Final = Code("10", "RFC-3881", "Search Criteria")
USER_IDENTIFIER: Final = Code("11", "RFC-3881", "User Identifier")
URI: Final = Code("12", "RFC-3881", "URI")
TOKEN_ID: Final = Code("token", LOCAL, "API token")
TARGET: Final = Code("target", LOCAL, "Target")

OUTCOME_INDICATOR: Final = {Outcome.OK: "0", Outcome.REFUSED: "4", Outcome.FAILED: "8"}
"""EventOutcomeIndicator: success, minor failure, serious failure."""

APPLICATION_SERVER: Final = "4"
"""AuditSourceTypeCode: application server process (A.5.1.2.1)."""


@dataclass(frozen=True)
class Subject:
    """How ``record.target`` is described as a ParticipantObjectIdentification."""

    id_type: Code
    type_code: str
    """1 person, 2 system object."""
    role: str | None = None
    """ParticipantObjectTypeCodeRole: 1 patient, 3 report, 13 security resource, 24 query."""


GENERIC: Final = Subject(TARGET, "2")
PATIENT: Final = Subject(PATIENT_NUMBER, "1", "1")
STUDY: Final = Subject(STUDY_UID, "2", "3")
REIDENTIFIED: Final = {
    "patient": PATIENT,
    "study": STUDY,
    "series": Subject(SERIES_UID, "2", "3"),
    "accession": Subject(ACCESSION, "2", "3"),
}
"""The subject of a re-identification by the kind its target names (``patient:<pseudonym>``,
``study:<uid>``, ...)."""


@dataclass(frozen=True)
class Event:
    """The DICOM event one action is reported as."""

    event_id: Code
    action_code: str
    type_code: Code | None = None
    actor_role: Code | None = None
    node_role: Code | None = None
    actor_requests: bool = True
    """UserIsRequestor of the actor (A.5.3.11: never for whoever caused a security alert)."""
    subject: Subject = GENERIC
    target_as: str = "object"
    """``object`` (a participant object), ``media`` (an export's archive: a Destination
    Media participant), ``node``: the alert is about the remote node (``remote``), not
    ``target``."""
    destination: bool = False
    """``detail["destination"]`` (the AE title a C-MOVE sent to) is a Destination participant."""
    alert: str = ""
    """Security Alert: the default "Alert Description" of the alert's subject."""


INSTANCES_ACCESSED: Final = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Final = _dcm("110104", "DICOM Instances Transferred")
EXPORT: Final = _dcm("110106", "Export")
PATIENT_RECORD: Final = _dcm("110110", "Patient Record")
QUERY: Final = _dcm("110112", "Query")
SECURITY_ALERT: Final = _dcm("110113", "Security Alert")
USER_AUTHENTICATION: Final = _dcm("110114", "User Authentication")
LOGIN: Final = _dcm("110122", "Login")
LOGOUT: Final = _dcm("110123", "Logout")
NODE_AUTHENTICATION: Final = _dcm("110126", "Node Authentication")
RESTRICTED_FUNCTION: Final = _dcm("110132", "Use of Restricted Function")
USER_SECURITY_ATTRIBUTES: Final = _dcm("110137", "User Security Attributes Changed")

_COHORT: Final = Subject(SEARCH_CRITERIA, "2", "24")
_SECURITY_RESOURCE: Final = "13"

EVENTS: Final[dict[Action, Event]] = {
    Action.ASSOCIATION: Event(USER_AUTHENTICATION, "E", LOGIN),
    Action.STORE: Event(INSTANCES_TRANSFERRED, "C", None, SOURCE, DESTINATION),
    Action.QUERY: Event(
        QUERY, "E", None, SOURCE, DESTINATION, subject=Subject(SEARCH_CRITERIA, "2", "3")
    ),
    Action.RETRIEVE: Event(INSTANCES_TRANSFERRED, "R", None, DESTINATION, SOURCE),
    Action.MOVE: Event(INSTANCES_TRANSFERRED, "R", None, None, SOURCE, destination=True),
    Action.EXPORT: Event(EXPORT, "R", None, SOURCE, SOURCE, target_as="media"),
    Action.COHORT_DEFINE: Event(INSTANCES_ACCESSED, "R", subject=_COHORT),
    Action.COHORT_FREEZE: Event(INSTANCES_ACCESSED, "R", subject=_COHORT),
    Action.REIDENTIFY: Event(PATIENT_RECORD, "R", subject=PATIENT),
    Action.VAULT_SCAN: Event(PATIENT_RECORD, "R", subject=PATIENT),
    Action.QUARANTINE_RELEASE: Event(INSTANCES_ACCESSED, "C"),
    Action.QUARANTINE_DISCARD: Event(INSTANCES_ACCESSED, "D"),
    Action.COMMITMENT: Event(INSTANCES_TRANSFERRED, "R", None, SOURCE, DESTINATION),
    Action.LOGIN: Event(USER_AUTHENTICATION, "E", LOGIN),
    Action.LOGOUT: Event(USER_AUTHENTICATION, "E", LOGOUT),
    Action.TOKEN_CHANGE: Event(
        SECURITY_ALERT,
        "E",
        USER_SECURITY_ATTRIBUTES,
        subject=Subject(TOKEN_ID, "2", _SECURITY_RESOURCE),
        alert="API token created or revoked",
    ),
    Action.USER_CHANGE: Event(
        SECURITY_ALERT,
        "E",
        USER_SECURITY_ATTRIBUTES,
        subject=Subject(USER_IDENTIFIER, "2", _SECURITY_RESOURCE),
        alert="user created, changed or removed",
    ),
    Action.ACCESS_DENIED: Event(
        SECURITY_ALERT,
        "E",
        RESTRICTED_FUNCTION,
        actor_requests=False,
        subject=Subject(URI, "2", _SECURITY_RESOURCE),
        alert="request refused",
    ),
}
"""Each action's event; :func:`event_for` swaps in :data:`REFUSED_ASSOCIATION`."""

REFUSED_ASSOCIATION: Final = Event(
    SECURITY_ALERT,
    "E",
    NODE_AUTHENTICATION,
    actor_requests=False,
    subject=Subject(NODE_ID, "2"),
    target_as="node",
    alert="association refused",
)
"""An association refused (or failed): a node authentication failure (A.5.3.11)."""


def event_for(action: Action, outcome: Outcome) -> Event:
    """The DICOM event of ``action`` with ``outcome``."""
    if action is Action.ASSOCIATION and outcome is not Outcome.OK:
        return REFUSED_ASSOCIATION
    return EVENTS[action]


def audit_message(
    record: AuditRecord, settings: AuditSettings, node_ae_title: str, hostname: str
) -> bytes:
    """``record`` as a DICOM audit message, UTF-8 XML; the node (``node_ae_title`` on
    ``hostname``) is its audit source and one of its participants.

    Raises ``ValueError`` for an action that is not one of :class:`Action`.
    """
    try:
        action = Action(record.action)
    except ValueError:
        raise ValueError(f"no DICOM audit message for the action {record.action!r}") from None
    outcome = outcome_of(record.outcome)
    event = event_for(action, outcome)
    root = ET.Element("AuditMessage")

    identification = _element(
        root,
        "EventIdentification",
        EventActionCode=event.action_code,
        EventDateTime=_datetime(record.at),
        EventOutcomeIndicator=OUTCOME_INDICATOR[outcome],
    )
    _code(identification, "EventID", event.event_id)
    if event.type_code is not None:
        _code(identification, "EventTypeCode", event.type_code)
    _code(identification, "EventTypeCode", Code(action.value, LOCAL, action.value))
    reason = record.detail.get("reason")
    if outcome is not Outcome.OK and isinstance(reason, str) and reason:
        _element(identification, "EventOutcomeDescription").text = _clean(reason)

    actor = _participant(root, record.actor, event.actor_requests, event.actor_role, record.remote)
    if record.door == "dimse":  # the caller's name is its AE title
        actor.set("AlternativeUserID", _clean(f"AETITLES={record.actor}"))
    node = _participant(root, node_ae_title, False, event.node_role, hostname)
    node.set("AlternativeUserID", _clean(f"AETITLES={node_ae_title}"))
    destination = record.detail.get("destination")
    if event.destination and isinstance(destination, str) and destination:
        moved_to = _participant(root, destination, False, DESTINATION, "")
        moved_to.set("AlternativeUserID", _clean(f"AETITLES={destination}"))
    if event.target_as == "media" and record.target:
        media = _participant(root, record.target, False, DESTINATION_MEDIA, "")
        _code(_element(media, "MediaIdentifier"), "MediaType", MEDIA_URI)

    source = _element(root, "AuditSourceIdentification")
    if settings.enterprise_site_id:
        source.set("AuditEnterpriseSiteID", _clean(settings.enterprise_site_id))
    source.set("AuditSourceID", _clean(settings.source_id))
    _element(source, "AuditSourceTypeCode", **{"csd-code": APPLICATION_SERVER})

    objects = [
        _subject(root, event, action, record),
        *(_object(root, STUDY, uid) for uid in record.studies),
    ]
    first = next((o for o in objects if o is not None), None)
    if first is not None:
        details = list(_details(record.detail))
        if event.alert:
            alert = reason if isinstance(reason, str) and reason else event.alert
            details.insert(0, ("Alert Description", alert))
        _add_details(first, details)
    message: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return message


def _subject(
    root: ET.Element, event: Event, action: Action, record: AuditRecord
) -> ET.Element | None:
    """The participant object ``target`` (or, for a refused association, the remote node)
    stands for, or None."""
    if event.target_as == "node":
        host = _network_access_point(record.remote)[0]
        return _object(root, event.subject, host) if host else None
    if event.target_as != "object":
        return None
    if action is Action.QUERY:
        return _object(root, event.subject, record.target or "query")
    if not record.target:
        return None
    subject, object_id = event.subject, record.target
    if named := _NAMED.fullmatch(record.target):
        object_id = named["id"]
        if action in (Action.REIDENTIFY, Action.VAULT_SCAN):
            subject = REIDENTIFIED.get(named["kind"], GENERIC)
    elif request := _REQUEST.fullmatch(record.target):
        object_id = request["path"]
    return _object(root, subject, object_id, record.target)


_NAMED: Final = re.compile(
    r"(?:studies of )?(?P<kind>patient|study|series|accession|user|token):(?P<id>.+)"
)
"""A target that names what it is (``patient:<pseudonym>``, ``user:<name>``, ...): the
participant object's ID is the part after the colon."""
_REQUEST: Final = re.compile(r"[A-Z]+ (?P<path>/\S*)")
"""A refused request, ``METHOD /route``: its ID is the route."""


def _participant(
    root: ET.Element, user: str, requestor: bool, role: Code | None, where: str
) -> ET.Element:
    participant = _element(
        root, "ActiveParticipant", UserID=user, UserIsRequestor="true" if requestor else "false"
    )
    host, kind = _network_access_point(where)
    if host:
        participant.set("NetworkAccessPointID", _clean(host))
        participant.set("NetworkAccessPointTypeCode", kind)
    if role is not None:
        _code(participant, "RoleIDCode", role)
    return participant


def _network_access_point(remote: str) -> tuple[str, str]:
    """The host of ``host:port`` (also ``[v6]:port``, ``v6:port`` and a bare host) and its
    NetworkAccessPointTypeCode: 2 an IP address, 1 a machine name."""
    host = remote.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif ":" in host:
        head, _, port = host.rpartition(":")
        if port.isdigit() and (host.count(":") == 1 or _is_ip(head)):
            host = head
    return host, "2" if _is_ip(host) else "1"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _object(
    root: ET.Element, subject: Subject, object_id: str, name: str | None = None
) -> ET.Element:
    element = _element(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=object_id,
        ParticipantObjectTypeCode=subject.type_code,
    )
    if subject.role is not None:
        element.set("ParticipantObjectTypeCodeRole", subject.role)
    _code(element, "ParticipantObjectIDTypeCode", subject.id_type)
    _element(element, "ParticipantObjectName").text = _clean(name or object_id)
    return element


def _details(detail: dict[str, object]) -> Iterator[tuple[str, str]]:
    """Type-value pairs of ``detail``: text, numbers and booleans, one pair per item of a
    list of them (the keys of a query); anything else is left out."""
    for key, value in sorted(detail.items()):
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, bool):
                yield key, "true" if item else "false"
            elif isinstance(item, str | int | float):
                yield key, str(item)


def _add_details(element: ET.Element, details: list[tuple[str, str]]) -> None:
    """ParticipantObjectDetail elements (type and base64 of the UTF-8 value)."""
    for key, value in details:
        encoded = base64.b64encode(_clean(value).encode("utf-8")).decode("ascii")
        _element(element, "ParticipantObjectDetail", type=key, value=encoded)


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return _element(
        parent,
        tag,
        **{"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning},
    )


def _element(parent: ET.Element, tag: str, **attributes: str) -> ET.Element:
    return ET.SubElement(parent, tag, {name: _clean(value) for name, value in attributes.items()})


def _datetime(at: datetime) -> str:
    """xsd:dateTime in UTC with milliseconds (a naive ``at`` is UTC, as the catalog keeps)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    """``text`` with every character XML 1.0 cannot carry (controls, lone surrogates,
    U+FFFE/U+FFFF) replaced by U+FFFD; escaping is the serializer's."""
    return _NOT_XML.sub("\ufffd", text)
