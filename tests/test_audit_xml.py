"""Audit records as DICOM audit messages (PS3.15 A.5): every action and outcome validates
against the standard's schema, with the event, outcome, participants and studies it should."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from audit.dicom_xml import audit_message
from audit.events import Action, AuditRecord, Outcome
from config.audit import AuditSettings

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parent / "data" / "dicom-audit.rng")))
SETTINGS = AuditSettings(source_id="pacsnode-test", enterprise_site_id="Hospital")
STUDIES = ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2")
AT = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)

EVENT_IDS = {
    Action.ASSOCIATION: "110114",
    Action.STORE: "110104",
    Action.QUERY: "110112",
    Action.RETRIEVE: "110104",
    Action.MOVE: "110104",
    Action.EXPORT: "110106",
    Action.COHORT_DEFINE: "110103",
    Action.COHORT_FREEZE: "110103",
    Action.REIDENTIFY: "110110",
    Action.VAULT_SCAN: "110110",
    Action.QUARANTINE_RELEASE: "110103",
    Action.QUARANTINE_DISCARD: "110103",
    Action.COMMITMENT: "110104",
    Action.LOGIN: "110114",
    Action.LOGOUT: "110114",
    Action.TOKEN_CHANGE: "110113",
    Action.USER_CHANGE: "110113",
    Action.ACCESS_DENIED: "110113",
}
ACTION_CODES = {
    Action.STORE: "C",
    Action.RETRIEVE: "R",
    Action.MOVE: "R",
    Action.EXPORT: "R",
    Action.QUERY: "E",
    Action.REIDENTIFY: "R",
    Action.QUARANTINE_RELEASE: "C",
    Action.QUARANTINE_DISCARD: "D",
    Action.LOGIN: "E",
}
TYPE_CODES = {
    Action.LOGIN: "110122",
    Action.LOGOUT: "110123",
    Action.TOKEN_CHANGE: "110137",
    Action.USER_CHANGE: "110137",
    Action.ACCESS_DENIED: "110132",
}
INDICATORS = {Outcome.OK: "0", Outcome.REFUSED: "4", Outcome.FAILED: "8"}


def record(action: Action, outcome: Outcome = Outcome.OK, **changes: object) -> AuditRecord:
    fields: dict[str, object] = {
        "at": AT,
        "actor": "alice",
        "action": action.value,
        "outcome": outcome.value,
        "door": "http",
        "remote": "127.0.0.1:50000",
        "target": "cohort:lungs@2",
        "studies": STUDIES,
        "detail": {"count": 3, "keys": ["StudyDate", "ModalitiesInStudy"], "kind": "patient"},
    }
    fields.update(changes)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def render(rec: AuditRecord) -> etree._Element:
    xml = audit_message(rec, SETTINGS, "PACSNODE", "pacs.example.org")
    assert xml.startswith(b"<?xml")
    root = etree.fromstring(xml)
    SCHEMA.assertValid(root)
    return root


def details(element: etree._Element) -> list[tuple[str, str]]:
    return [
        (d.get("type"), base64.b64decode(d.get("value")).decode("utf-8"))
        for d in element.findall("ParticipantObjectDetail")
    ]


@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize("action", list(Action))
def test_every_action_and_outcome_is_a_valid_audit_message(
    action: Action, outcome: Outcome
) -> None:
    root = render(record(action, outcome))
    event = root.find("EventIdentification")
    assert event is not None
    refused_association = action is Action.ASSOCIATION and outcome is not Outcome.OK
    expected_id = "110113" if refused_association else EVENT_IDS[action]
    assert event.find("EventID").get("csd-code") == expected_id
    assert event.find("EventID").get("codeSystemName") == "DCM"
    assert event.get("EventOutcomeIndicator") == INDICATORS[outcome]
    assert event.get("EventDateTime") == "2026-03-01T12:30:45.123Z"
    if action in ACTION_CODES:
        assert event.get("EventActionCode") == ACTION_CODES[action]
    types = [(t.get("csd-code"), t.get("codeSystemName")) for t in event.findall("EventTypeCode")]
    assert (action.value, "99PACSNODE") in types
    if action in TYPE_CODES:
        assert (TYPE_CODES[action], "DCM") in types

    participants = root.findall("ActiveParticipant")
    actor = participants[0]
    assert actor.get("UserID") == "alice"
    assert actor.get("NetworkAccessPointID") == "127.0.0.1"
    assert actor.get("NetworkAccessPointTypeCode") == "2"
    requestors = [p for p in participants if p.get("UserIsRequestor") == "true"]
    assert len(requestors) <= 1
    security_alert = event.find("EventID").get("csd-code") == "110113"
    performed_alert = action is Action.ACCESS_DENIED or action is Action.ASSOCIATION
    assert actor.get("UserIsRequestor") == (
        "false" if security_alert and performed_alert else "true"
    )
    node = participants[1]
    assert node.get("UserID") == "PACSNODE"
    assert node.get("AlternativeUserID") == "AETITLES=PACSNODE"
    assert node.get("NetworkAccessPointID") == "pacs.example.org"
    assert node.get("NetworkAccessPointTypeCode") == "1"
    assert node.get("UserIsRequestor") == "false"

    source = root.find("AuditSourceIdentification")
    assert source.get("AuditSourceID") == "pacsnode-test"
    assert source.get("AuditEnterpriseSiteID") == "Hospital"

    objects = root.findall("ParticipantObjectIdentification")
    studies = [
        o
        for o in objects
        if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
        and o.get("ParticipantObjectID") in STUDIES
    ]
    assert [o.get("ParticipantObjectID") for o in studies] == list(STUDIES)
    for study in studies:
        assert study.get("ParticipantObjectTypeCode") == "2"
        assert study.get("ParticipantObjectTypeCodeRole") == "3"
        assert study.find("ParticipantObjectIDTypeCode").get("codeSystemName") == "DCM"
    assert ("count", "3") in details(objects[0])
    if security_alert:
        assert details(objects[0])[0][0] == "Alert Description"


def test_store_names_source_and_destination() -> None:
    root = render(record(Action.STORE, actor="MODALITY1", door="dimse", target=""))
    actor, node = root.findall("ActiveParticipant")
    assert actor.get("AlternativeUserID") == "AETITLES=MODALITY1"
    assert actor.find("RoleIDCode").get("csd-code") == "110153"
    assert node.find("RoleIDCode").get("csd-code") == "110152"
    assert root.find("EventIdentification").get("EventActionCode") == "C"


def test_move_names_its_destination() -> None:
    detail = {"destination": "WORKSTATION7", "instances": 12}
    root = render(
        record(
            Action.MOVE,
            actor="VIEWER",
            door="dimse",
            target="C-MOVE to WORKSTATION7",
            detail=detail,
        )
    )
    actor, node, destination = root.findall("ActiveParticipant")
    assert actor.get("UserIsRequestor") == "true"
    assert actor.find("RoleIDCode") is None
    assert node.find("RoleIDCode").get("csd-code") == "110153"
    assert destination.get("UserID") == "WORKSTATION7"
    assert destination.get("AlternativeUserID") == "AETITLES=WORKSTATION7"
    assert destination.find("RoleIDCode").get("csd-code") == "110152"
    assert destination.get("UserIsRequestor") == "false"
    first = root.find("ParticipantObjectIdentification")
    assert first.get("ParticipantObjectID") == "C-MOVE to WORKSTATION7"
    assert ("instances", "12") in details(first)


def test_export_names_its_media() -> None:
    root = render(record(Action.EXPORT, target="export_run:7 cohort:lungs@2"))
    media = root.findall("ActiveParticipant")[2]
    assert media.get("UserID") == "export_run:7 cohort:lungs@2"
    assert media.find("RoleIDCode").get("csd-code") == "110154"
    assert media.find("MediaIdentifier/MediaType").get("csd-code") == "110037"


def test_query_keys_are_details_of_the_query_object() -> None:
    root = render(record(Action.QUERY, target="", studies=()))
    (query,) = root.findall("ParticipantObjectIdentification")
    assert query.find("ParticipantObjectIDTypeCode").get("csd-code") == "10"
    assert query.find("ParticipantObjectQuery") is None
    assert [v for k, v in details(query) if k == "keys"] == ["StudyDate", "ModalitiesInStudy"]


@pytest.mark.parametrize(
    ("target", "object_id", "id_type", "type_code"),
    [
        ("patient:PSEUDO-123", "PSEUDO-123", "2", "1"),
        ("studies of patient:PSEUDO-123", "PSEUDO-123", "2", "1"),
        ("study:2.25.1234", "2.25.1234", "110180", "2"),
        ("series:2.25.99", "2.25.99", "112002", "2"),
        ("accession:ACC77", "ACC77", "121022", "2"),
        ("PSEUDO-9", "PSEUDO-9", "2", "1"),
    ],
)
def test_reidentify_names_the_pseudonym_and_the_reason(
    target: str, object_id: str, id_type: str, type_code: str
) -> None:
    detail = {"reason": "tumour board"}
    root = render(record(Action.REIDENTIFY, target=target, studies=(), detail=detail))
    event = root.find("EventIdentification")
    assert (event.find("EventID").get("csd-code"), event.get("EventActionCode")) == ("110110", "R")
    (read,) = root.findall("ParticipantObjectIdentification")
    assert read.get("ParticipantObjectID") == object_id
    assert read.find("ParticipantObjectName").text == target
    assert read.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type
    assert read.get("ParticipantObjectTypeCode") == type_code
    assert read.get("ParticipantObjectTypeCodeRole") == ("1" if type_code == "1" else "3")
    assert details(read) == [("reason", "tumour board")]


def test_security_alert_subjects() -> None:
    user = render(record(Action.USER_CHANGE, target="user:bob", detail={"change": "added"}))
    subject = user.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "bob"
    assert subject.find("ParticipantObjectIDTypeCode").get("csd-code") == "11"
    assert subject.get("ParticipantObjectTypeCodeRole") == "13"
    assert details(subject)[:2] == [
        ("Alert Description", "user created, changed or removed"),
        ("change", "added"),
    ]
    token = render(record(Action.TOKEN_CHANGE, target="token:ci", studies=()))
    assert token.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "ci"
    denied = render(
        record(
            Action.ACCESS_DENIED,
            Outcome.REFUSED,
            target="GET /dicom-web/studies/{study}",
            detail={"status": 403},
        )
    )
    subject = denied.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "/dicom-web/studies/{study}"
    assert subject.find("ParticipantObjectIDTypeCode").get("csd-code") == "12"
    assert details(subject)[0] == ("Alert Description", "request refused")


def test_refused_association_is_a_node_authentication_alert() -> None:
    root = render(
        record(
            Action.ASSOCIATION,
            Outcome.REFUSED,
            actor="STRANGER",
            door="dimse",
            remote="10.1.2.3:4000",
        )
    )
    event = root.find("EventIdentification")
    assert event.find("EventID").get("csd-code") == "110113"
    assert event.find("EventTypeCode").get("csd-code") == "110126"
    subject = root.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "10.1.2.3"
    assert subject.find("ParticipantObjectIDTypeCode").get("csd-code") == "110182"
    assert details(subject)[0] == ("Alert Description", "association refused")
    assert root.find("ActiveParticipant").get("UserIsRequestor") == "false"
    accepted = render(record(Action.ASSOCIATION, Outcome.OK))
    assert accepted.find("EventIdentification/EventID").get("csd-code") == "110114"


def test_failure_reason_is_the_outcome_description() -> None:
    root = render(record(Action.LOGIN, Outcome.FAILED, detail={"reason": "bad password"}))
    event = root.find("EventIdentification")
    assert event.find("EventOutcomeDescription").text == "bad password"
    assert render(record(Action.LOGIN)).find("EventIdentification/EventOutcomeDescription") is None


@pytest.mark.parametrize("action", [Action.LOGIN, Action.STORE, Action.ASSOCIATION])
def test_a_record_with_no_studies_target_or_remote_validates(action: Action) -> None:
    root = render(
        AuditRecord(at=AT, actor="node", action=action.value, outcome="refused", remote="")
    )
    assert root.find("ActiveParticipant").get("NetworkAccessPointID") is None
    assert root.findall("ParticipantObjectIdentification") == []


def test_remote_names_and_ipv6() -> None:
    named = render(record(Action.LOGIN, remote="ws12.example.org:8080"))
    assert named.find("ActiveParticipant").get("NetworkAccessPointID") == "ws12.example.org"
    assert named.find("ActiveParticipant").get("NetworkAccessPointTypeCode") == "1"
    for remote in ("[::1]:8080", "::1:8080", "::1"):
        v6 = render(record(Action.LOGIN, remote=remote)).find("ActiveParticipant")
        assert v6.get("NetworkAccessPointID") == "::1", remote
        assert v6.get("NetworkAccessPointTypeCode") == "2"
    bare = render(record(Action.LOGIN, remote="ws12")).find("ActiveParticipant")
    assert bare.get("NetworkAccessPointID") == "ws12"


def test_times_are_utc() -> None:
    cet = timezone(timedelta(hours=1))
    root = render(record(Action.LOGIN, at=datetime(2026, 3, 1, 13, 0, tzinfo=cet)))
    assert root.find("EventIdentification").get("EventDateTime") == "2026-03-01T12:00:00.000Z"
    naive = render(record(Action.LOGIN, at=datetime(2026, 3, 1, 13, 0)))
    assert naive.find("EventIdentification").get("EventDateTime") == "2026-03-01T13:00:00.000Z"


def test_hostile_text_is_escaped_not_interpreted() -> None:
    hostile = "<x>&\"'</AuditMessage><!--"
    root = render(
        record(
            Action.ACCESS_DENIED,
            Outcome.REFUSED,
            actor=hostile,
            target=hostile,
            detail={"reason": hostile, hostile: hostile, "control": "a\x00b\x1bc\ud800"},
        )
    )
    assert root.find("ActiveParticipant").get("UserID") == hostile
    subject = root.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == hostile
    assert subject.find("ParticipantObjectName").text == hostile
    assert root.find("EventIdentification/EventOutcomeDescription").text == hostile
    assert (hostile, hostile) in details(subject)
    assert ("control", "a\ufffdb\ufffdc\ufffd") in details(subject)
    assert len(root.findall("ActiveParticipant")) == 2


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="reidentify_patient"):
        audit_message(
            AuditRecord(at=AT, actor="a", action="reidentify_patient", outcome="ok"),
            SETTINGS,
            "PACSNODE",
            "pacs",
        )


@pytest.mark.parametrize(
    ("recorded", "indicator"),
    [("found", "0"), ("committed", "0"), ("not_found", "4"), ("2 failed", "8"), ("partial", "8")],
)
def test_outcomes_in_other_words_are_classed(recorded: str, indicator: str) -> None:
    """The vault, exports and Storage Commitment record outcomes in their own words."""
    message = audit_message(
        AuditRecord(at=AT, actor="a", action="reidentify", outcome=recorded, target="patient:P1"),
        SETTINGS,
        "PACSNODE",
        "pacs",
    )
    identification = etree.fromstring(message).find("EventIdentification")
    assert identification is not None
    assert identification.get("EventOutcomeIndicator") == indicator
