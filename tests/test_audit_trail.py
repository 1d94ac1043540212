"""The audit trail: every door records who did what, when, from where, to which studies.

One node per module (DICOM and HTTP on loopback, token and password logins) receives two of
pydicom's files from a modality with dcmtk's storescu; each test then acts through one door
with a real client (pynetdicom, dcmtk, httpx, the CLI) and reads the events back through
``/api/audit`` as an admin would. The trail holds stored (de-identified) UIDs only: the
original names and UIDs of the files appear nowhere in it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from access.credentials import Credentials
from audit import AuditTrail
from catalog.audit import AuditFilter, read_audit, record_audit
from catalog.models import Study
from config import load_settings
from node.app import Core, Node
from tests.dicom_bytes import sample
from tests.peers import HOST, dcmtk, free_port
from tests.test_retrieve import Receiver

FILES = ("CT_small.dcm", "MR_small.dcm")
PASSWORD = "correct horse battery staple"


class Archive:
    def __init__(self, node: Node, admin: str, viewer: str, uploader: str) -> None:
        self.node = node
        self.base = f"http://{HOST}:{node.http_port}"
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.viewer = {"Authorization": f"Bearer {viewer}"}
        self.uploader = {"Authorization": f"Bearer {uploader}"}
        self.receiver_port = 0

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """The events matching ``filters``, newest first, once the trail has written all."""
        assert self.node.core.audit.flush()
        answer = httpx.get(f"{self.base}/api/audit", params=filters, headers=self.admin, timeout=10)
        assert answer.status_code == 200, answer.text
        events: list[dict[str, Any]] = answer.json()["events"]
        return events

    def stored_study(self, original: Dataset) -> str:
        """The UID the archive keeps for ``original``'s study."""
        stored = self.node.core.pseudonymizer.uid(original.StudyInstanceUID)
        with self.node.core.db.read() as session:
            assert session.scalar(select(Study.id).where(Study.study_instance_uid == stored))
        return stored


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("audit")
    receiver_port = free_port()
    node = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={"methods": ["token", "password"]},
            allowed_calling_aets=["MODALITY", "VIEWER"],
            qr={"destinations": [{"ae_title": "STORESCP", "host": HOST, "port": receiver_port}]},
        )
    )
    node.start()
    try:
        credentials = Credentials(node.core.db, node.settings.access)
        running = Archive(
            node,
            credentials.create_token("auditor", ["admin"], None, "test"),
            credentials.create_token("reader", ["viewer"], None, "test"),
            credentials.create_token("sender", ["uploader"], None, "test"),
        )
        running.receiver_port = receiver_port
        credentials.add_user("alice", PASSWORD, ["viewer"], None, actor="test")
        files = []
        for name in FILES:
            path = folder / name
            sample(name).save_as(path)
            files.append(str(path))
        sent = subprocess.run(
            [
                dcmtk("storescu"),
                "-aet",
                "MODALITY",
                "-aec",
                "PACSNODE",
                HOST,
                str(node.dicom.port),
                *files,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        yield running
    finally:
        node.stop()


def everything(archive: Archive) -> str:
    """Every column of every event, as text: what a leak would show up in."""
    archive.node.core.audit.flush()
    with archive.node.core.db.read() as session:
        rows = session.execute(text("SELECT * FROM audit_event")).all()
        studies = session.execute(text("SELECT * FROM audit_event_study")).all()
    return json.dumps([list(map(str, row)) for row in [*rows, *studies]])


# --------------------------------------------------------------------------------- DIMSE


def test_an_accepted_and_a_refused_association_are_events(archive: Archive) -> None:
    for title in ("MODALITY", "STRANGER"):
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        assoc = ae.associate(HOST, archive.node.dicom.port, ae_title="PACSNODE")
        assert assoc.is_established == (title == "MODALITY")
        if assoc.is_established:
            assoc.release()
    accepted = archive.events(action="association", actor="MODALITY", outcome="ok")
    assert accepted and accepted[0]["door"] == "dimse"
    assert accepted[0]["remote"].startswith(f"{HOST}:")
    assert accepted[0]["detail"]["called"] == "PACSNODE"
    (refused,) = archive.events(action="association", actor="STRANGER")
    assert refused["outcome"] == "refused"
    assert "allowed_calling_aets" in refused["detail"]["reason"]


def test_a_store_association_is_one_event_per_study_with_counts(archive: Archive) -> None:
    events = archive.events(action="store", actor="MODALITY")
    studies = {archive.stored_study(sample(name)) for name in FILES}
    assert {event["studies"][0] for event in events} == studies
    assert all(event["detail"] == {"stored": 1} and event["door"] == "dimse" for event in events)
    assert {event["remote"] for event in events} == {events[0]["remote"]}  # one association
    assert all(event["target"] == "called PACSNODE" for event in events)


def test_a_find_records_its_keys_and_matches_never_the_values(archive: Archive) -> None:
    original = sample("CT_small.dcm")
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, archive.node.dicom.port, ae_title="PACSNODE")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "*"
    query.StudyInstanceUID = ""
    answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    assert len(answers) == 3  # two pending, one success
    probe = Dataset()
    probe.QueryRetrieveLevel = "STUDY"
    probe.PatientName = str(original.PatientName)  # someone typing the original name
    list(assoc.send_c_find(probe, StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    found, probed = sorted(
        archive.events(action="query", actor="VIEWER"), key=lambda e: -e["detail"]["matches"]
    )
    assert found["detail"] == {"keys": ["PatientName"], "matches": 2}
    assert len(found["studies"]) == 2 and found["target"] == "C-FIND STUDY"
    assert probed["detail"]["matches"] == 0 and probed["studies"] == []
    assert str(original.PatientName) not in everything(archive)


def test_get_and_move_record_the_studies_sent(archive: Archive, tmp_path: Path) -> None:
    study = archive.stored_study(sample("MR_small.dcm"))
    got = subprocess.run(
        [
            dcmtk("getscu"),
            "-aet",
            "VIEWER",
            "-aec",
            "PACSNODE",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "-od",
            str(tmp_path),
            HOST,
            str(archive.node.dicom.port),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    receiver = Receiver(archive.receiver_port)
    try:
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(HOST, archive.node.dicom.port, ae_title="PACSNODE")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        for destination in ("STORESCP", "NOWHERE"):
            model = StudyRootQueryRetrieveInformationModelMove
            list(assoc.send_c_move(identifier, destination, model))
        assoc.release()
    finally:
        receiver.server.shutdown()
    assert len(receiver.received) == 1
    (get,) = archive.events(action="retrieve", door="dimse")
    assert get["actor"] == "VIEWER" and get["studies"] == [study]
    assert get["target"] == "C-GET" and get["detail"] == {"instances": 1}
    sent, refused = sorted(archive.events(action="move"), key=lambda e: e["outcome"])
    assert sent["outcome"] == "ok" and sent["studies"] == [study]
    assert sent["detail"] == {"instances": 1, "destination": "STORESCP"}
    assert refused["outcome"] == "refused" and refused["studies"] == []
    assert refused["detail"]["destination"] == "NOWHERE"


# ---------------------------------------------------------------------------------- HTTP


def test_qido_and_wado_are_recorded_and_a_viewers_requests_aggregate(archive: Archive) -> None:
    study = archive.stored_study(sample("CT_small.dcm"))
    base = f"{archive.base}/dicom-web"
    found = httpx.get(
        f"{base}/studies", params={"PatientName": "*", "limit": "5"}, headers=archive.viewer
    )
    assert found.status_code == 200 and len(found.json()) == 2
    for _ in range(3):  # a viewer fetching the metadata and the frame, again and again
        assert httpx.get(f"{base}/studies/{study}/metadata", headers=archive.viewer).is_success
    missing = httpx.get(f"{base}/studies/1.2.3.4/metadata", headers=archive.viewer)
    assert missing.status_code == 404
    (query,) = archive.events(action="query", door="http")
    assert query["actor"] == "token:reader" and query["outcome"] == "ok"
    assert query["detail"] == {
        "level": "STUDY",
        "keys": ["PatientName"],
        "matches": 2,
        "status": 200,
    }
    assert len(query["studies"]) == 2 and query["remote"].startswith(f"{HOST}:")
    retrieved = archive.events(action="retrieve", door="http")
    ok = [event for event in retrieved if event["outcome"] == "ok"]
    assert len(ok) == 1 and ok[0]["studies"] == [study] and ok[0]["detail"] == {"requests": 3}
    assert ok[0]["target"] == "WADO-RS"
    (refused,) = [event for event in retrieved if event["outcome"] == "refused"]
    assert refused["studies"] == []  # a UID the caller typed is not kept
    assert "1.2.3.4" not in everything(archive)


def test_stow_is_a_store_event_of_the_uploader(archive: Archive) -> None:
    ds = sample("rtdose.dcm")
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    from tests.dicom_bytes import part10

    body += part10(ds) + b"\r\n--b--\r\n"
    stored = httpx.post(
        f"{archive.base}/dicom-web/studies",
        content=body,
        headers={
            **archive.uploader,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
        timeout=30,
    )
    assert stored.status_code == 200, stored.text
    (event,) = archive.events(action="store", door="http")
    assert event["actor"] == "token:sender" and event["detail"] == {"stored": 1}
    assert event["studies"] == [archive.stored_study(ds)]
    assert ds.StudyInstanceUID not in everything(archive)


def test_refusals_logins_and_logouts_are_events(archive: Archive) -> None:
    assert httpx.get(f"{archive.base}/dicom-web/studies").status_code == 401
    assert httpx.get(f"{archive.base}/api/audit", headers=archive.viewer).status_code == 403
    denied = archive.events(action="access_denied")
    assert {(e["actor"], e["target"], e["detail"]["status"]) for e in denied} >= {
        ("anonymous", "GET /dicom-web/studies", 401),
        ("token:reader", "GET /api/audit", 403),
    }
    with httpx.Client(base_url=archive.base) as browser:
        wrong = browser.post("/login", data={"username": "alice", "password": "nope"})
        assert wrong.status_code == 401
        right = browser.post("/login", data={"username": "alice", "password": PASSWORD})
        assert right.status_code == 303
        headers = {"Origin": archive.base}
        assert browser.post("/logout", headers=headers).status_code == 303
    logins = archive.events(action="login")
    assert [(e["actor"], e["outcome"]) for e in logins[:2]] == [
        ("user:alice", "ok"),
        ("alice", "refused"),
    ]
    (logout,) = archive.events(action="logout")
    assert logout["actor"] == "user:alice" and logout["outcome"] == "ok"
    assert PASSWORD not in everything(archive)


def test_token_and_user_changes_by_the_cli_are_events(archive: Archive) -> None:
    data = str(archive.node.settings.data_dir)

    def pacsnode(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "node", *args, "--data-dir", data],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    pacsnode("tokens", "create", "script", "--role", "researcher", "--project", "lung")
    pacsnode("tokens", "revoke", "script")
    pacsnode("users", "disable", "alice")
    changes = archive.events(action="token_change") + archive.events(action="user_change")
    mine = [e for e in changes if e["actor"].startswith("cli ")]
    assert [(e["target"], e["detail"]) for e in mine] == [
        ("token:script", {"change": "revoked"}),
        ("token:script", {"change": "created", "roles": ["researcher"], "projects": ["lung"]}),
        ("user:alice", {"change": "disabled"}),
    ]


# ---------------------------------------------------------------------------- the trail


def test_the_api_filters_and_pages(archive: Archive) -> None:
    study = archive.stored_study(sample("CT_small.dcm"))
    about = archive.events(study=study)
    assert about and all(study in event["studies"] for event in about)
    assert {"store", "query", "retrieve"} <= {event["action"] for event in about}
    first = httpx.get(
        f"{archive.base}/api/audit", params={"limit": 2}, headers=archive.admin
    ).json()
    second = httpx.get(
        f"{archive.base}/api/audit",
        params={"limit": 2, "before": first["next"]},
        headers=archive.admin,
    ).json()
    ids = [e["id"] for e in first["events"] + second["events"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert archive.events(since=later) == []
    broken = httpx.get(
        f"{archive.base}/api/audit",
        params={"since": later, "until": "2020-01-01T00:00:00Z"},
        headers=archive.admin,
    )
    assert broken.status_code == 400 and "since" in broken.json()["detail"]
    assert httpx.get(f"{archive.base}/api/audit").status_code == 401


def test_the_cli_lists_and_exports_the_trail(archive: Archive, tmp_path: Path) -> None:
    archive.node.core.audit.flush()
    data = str(archive.node.settings.data_dir)
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "audit",
            "list",
            "--action",
            "login",
            "--json",
            "--data-dir",
            data,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert {e["action"] for e in json.loads(listed.stdout)} == {"login"}
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "audit",
            "export",
            str(tmp_path / "trail.jsonl"),
            "--data-dir",
            data,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    lines = (tmp_path / "trail.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == sorted(ids) and len(ids) == len(archive.events(limit=1000))


# ----------------------------------------------------------------- append-only, scoping


def test_the_database_refuses_to_change_or_remove_an_event(core: Core) -> None:
    with core.db.write() as session:
        record_audit(session, "someone", "query", "", studies=["1.2.3"])
    for statement in (
        "UPDATE audit_event SET actor = 'nobody'",
        "DELETE FROM audit_event",
        "DELETE FROM audit_event_study",
    ):
        with pytest.raises(DBAPIError, match="append-only"), core.db.write() as session:
            session.execute(text(statement))
    with core.db.read() as session:
        (event,) = read_audit(session, AuditFilter(), limit=10)
    assert event.actor == "someone" and event.studies == ("1.2.3",)


def test_aggregated_events_add_up_and_a_scoped_reader_sees_its_studies(core: Core) -> None:
    trail = AuditTrail(core.db, window=60)
    try:
        for _ in range(5):
            trail.record(
                "retrieve",
                actor="a",
                door="http",
                studies=["9.1"],
                detail={"requests": 1},
                aggregate=True,
            )
        trail.record(
            "retrieve",
            actor="a",
            door="http",
            studies=["9.2"],
            detail={"requests": 1},
            aggregate=True,
        )
        trail.record("login", actor="a", door="http")
        assert trail.flush()
    finally:
        trail.close()
    with core.db.read() as session:
        events = read_audit(session, AuditFilter(), limit=10)
        assert sorted(
            (e.studies, e.detail.get("requests")) for e in events if e.action == "retrieve"
        ) == [
            (("9.1",), 5),
            (("9.2",), 1),
        ]
        # no study 9.x is in a project: a reader scoped to one sees none of it, nor the
        # login (events about no study may name what is of other projects)
        scoped = read_audit(session, AuditFilter(projects=frozenset({"lung"})), limit=10)
    assert scoped == []
