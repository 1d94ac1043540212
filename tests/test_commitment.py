"""Storage Commitment Push Model against the node's AE on loopback.

pynetdicom plays the modality (dcmtk 3.6.7 ships no Storage Commitment SCU): it stores
pydicom's test files with C-STORE, then sends N-ACTION with the UIDs it sent and waits for
the N-EVENT-REPORT, on its association or on its own listener (a pynetdicom AE configured as
its entry of ``qr.destinations``).
"""

from __future__ import annotations

import copy
import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from catalog import RetrieveKeys, locate_keys
from catalog.models import AuditEvent
from config import DeidSettings, Settings, load_settings
from deid import PassThroughDeidentifier, ProfileDeidentifier, Pseudonymizer
from ingest.commitment import FailureReason
from node.app import Core, build_core
from scp import DicomServer
from scp.commitment import ActionStatus, EventType
from tests.dicom_bytes import sample
from tests.peers import HOST, free_port

pytestmark = pytest.mark.slow

MODALITY = "CT01"  # has an entry in qr.destinations: its listener
STRANGER = "CT99"  # has none
STORED = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm")
REFUSED = "SC_rgb_jpeg_dcmtk.dcm"  # secondary capture: refused by the burned-in policy
REPORT_WAIT = 20.0


# --------------------------------------------------------------------------- the modality


@dataclass(frozen=True)
class Report:
    """An N-EVENT-REPORT the modality received."""

    event_type: int
    information: Dataset
    via: str  # "association" (the requesting one) or "listener" (a new association)
    scp_role_proposed: bool | None = None

    def referenced(self) -> list[tuple[str, str]]:
        return [
            (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
            for item in self.information.get("ReferencedSOPSequence", [])
        ]

    def failed(self) -> dict[str, int]:
        return {
            item.ReferencedSOPInstanceUID: int(item.FailureReason)
            for item in self.information.get("FailedSOPSequence", [])
        }


class Listener:
    """The modality's Storage Commitment listener: accepts the node acting as SCP."""

    def __init__(self, port: int) -> None:
        self.reports: queue.Queue[Report] = queue.Queue()
        ae = AE(ae_title=MODALITY)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        server = ae.start_server(
            (HOST, port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._report)]
        )
        assert server is not None
        self.server: ThreadedAssociationServer = server

    def _report(self, event: Event) -> tuple[int, None]:
        role = event.assoc.requestor.role_selection.get(StorageCommitmentPushModel)
        self.reports.put(
            Report(
                int(event.event_type or 0),
                copy.deepcopy(event.event_information),
                "listener",
                None if role is None else bool(role.scp_role),
            )
        )
        return 0x0000, None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def next(self, timeout: float = REPORT_WAIT) -> Report:
        return self.reports.get(timeout=timeout)


def store(port: int, names: tuple[str, ...], calling: str = MODALITY) -> list[int]:
    """C-STORE test files as they are (each in its own transfer syntax)."""
    files = [sample(name) for name in names]
    ae = AE(ae_title=calling)
    for ds in files:
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate(HOST, port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in files]
    finally:
        assoc.release()


def reference(name: str) -> tuple[str, str]:
    """The SOP Class and Instance UID of a test file, as the modality knows them."""
    ds = sample(name)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def action_information(references: list[tuple[str, str]], transaction_uid: str) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


@dataclass
class Request:
    """One Storage Commitment request of the modality and what it got back."""

    status: int
    transaction_uid: str
    on_association: list[Report] = field(default_factory=list)
    released: bool = False  # the node answered the release (not an abort after a timeout)


def request_commitment(
    port: int,
    references: list[tuple[str, str]],
    *,
    calling: str = MODALITY,
    wait_on_association: bool = True,
    information: Dataset | None = None,
    action_type: int = 1,
) -> Request:
    """Send N-ACTION; keep the association until a report arrives on it, or release at once
    (a report that still comes on it, just before the release, is refused: it must then come
    over a new association)."""
    received: queue.Queue[Report] = queue.Queue()
    answering: list[Report] = []

    def on_report(event: Event) -> tuple[int, None]:
        if not wait_on_association:
            return 0x0110, None
        answering.append(
            Report(
                int(event.event_type or 0), copy.deepcopy(event.event_information), "association"
            )
        )
        return 0x0000, None

    def on_sent(event: Event) -> None:
        # the report counts as received once its answer has left: a modality that released
        # before would leave the node without one (and the node would report again anew)
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP" and answering:
            received.put(answering.pop())

    transaction_uid = generate_uid()
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        HOST,
        port,
        ae_title="PACSNODE",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report), (evt.EVT_DIMSE_SENT, on_sent)],
    )
    assert assoc.is_established
    status, _ = assoc.send_n_action(
        information or action_information(references, transaction_uid),
        action_type,
        StorageCommitmentPushModel,
        StorageCommitmentPushModelInstance,
    )
    request = Request(int(status.Status), transaction_uid)
    if wait_on_association and request.status == 0:
        request.on_association.append(received.get(timeout=REPORT_WAIT))
    assoc.release()
    request.released = assoc.is_released
    return request


def echo(port: int) -> int:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title="PACSNODE")
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def wait_for(caplog: pytest.LogCaptureFixture, text: str, timeout: float = REPORT_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------- the node


@dataclass
class Node:
    server: DicomServer
    core: Core
    listener: Listener

    @property
    def port(self) -> int:
        return self.server.port

    def blob_of(self, name: str) -> Path:
        uid = self.core.ingestor.deid.stored_uid(reference(name)[1])
        (instance,) = locate_keys(self.core.db, RetrieveKeys(sop_instance_uids=(uid,)))
        return self.core.blobs.path_of(instance.blob_key)


def node_settings(data_dir: Path, listener_port: int, **qr: Any) -> Settings:
    return load_settings(
        data_dir=data_dir,
        dicom_host="127.0.0.1",
        dicom_port=0,
        fsync=False,
        qr={
            "destinations": [{"ae_title": MODALITY, "host": HOST, "port": listener_port}],
            "commitment_delay": 0.3,
            "commitment_timeout": 5.0,
            **qr,
        },
    )


def start_node(settings: Settings, listener: Listener) -> Iterator[Node]:
    core = build_core(settings)
    server = DicomServer(settings, core.ingestor)
    server.start()
    try:
        yield Node(server, core, listener)
    finally:
        server.stop(grace=1)
        core.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    started = Listener(free_port())
    yield started
    started.server.shutdown()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, listener: Listener) -> Iterator[Node]:
    """One de-identifying node holding the stored test files, shared by the module."""
    settings = node_settings(tmp_path_factory.mktemp("commitment"), listener.port)
    for started in start_node(settings, listener):
        assert store(started.port, STORED) == [0] * len(STORED)
        assert store(started.port, (REFUSED,)) == [0xC001]
        yield started


@pytest.fixture
def fresh_listener(listener: Listener) -> Listener:
    while not listener.reports.empty():
        listener.reports.get_nowait()
    return listener


# ------------------------------------------------------------------------------- the tests


def test_all_committed_are_reported_on_the_same_association(
    node: Node, fresh_listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refs = [reference(name) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    request = request_commitment(node.port, refs)
    assert request.status == ActionStatus.SUCCESS
    (report,) = request.on_association
    assert report.event_type == int(EventType.ALL_COMMITTED) == 1
    assert report.information.TransactionUID == request.transaction_uid
    assert report.referenced() == refs  # the modality's own UIDs, in its order
    assert "FailedSOPSequence" not in report.information
    assert fresh_listener.reports.empty()
    wait_for(caplog, "reported to CT01 on its association")
    assert "storage commitment for CT01 (127.0.0.1:" in caplog.text
    assert "3 of 3 instances committed" in caplog.text
    for _, uid in refs:  # stored under other UIDs; the modality's are never logged
        assert node.core.ingestor.deid.stored_uid(uid) != uid
        assert uid not in caplog.text
    assert request.transaction_uid not in caplog.text


def test_an_instance_never_received_or_refused_fails_with_0112(
    node: Node, fresh_listener: Listener
) -> None:
    never_sent = (str(MRImageStorage), str(generate_uid()))
    refs = [reference("CT_small.dcm"), never_sent, reference(REFUSED)]
    (report,) = request_commitment(node.port, refs).on_association
    assert report.event_type == int(EventType.FAILURES_EXIST) == 2
    assert report.referenced() == [refs[0]]
    assert report.failed() == {never_sent[1]: 0x0112, refs[2][1]: 0x0112}
    assert int(FailureReason.NO_SUCH_OBJECT_INSTANCE) == 0x0112


def test_a_sop_class_other_than_the_stored_one_fails_with_0119(node: Node) -> None:
    ct_class, ct_instance = reference("CT_small.dcm")
    (report,) = request_commitment(node.port, [(str(MRImageStorage), ct_instance)]).on_association
    assert ct_class != MRImageStorage
    assert report.failed() == {ct_instance: 0x0119}


def test_a_blob_that_fails_its_sha256_or_is_gone_is_not_committed(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    corrupt, gone = node.blob_of("rtdose.dcm"), node.blob_of("test-SR.dcm")
    data = bytearray(corrupt.read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes: only the sha256 tells
    corrupt.write_bytes(bytes(data))
    gone.unlink()
    refs = [reference("rtdose.dcm"), reference("test-SR.dcm"), reference("MR_small.dcm")]
    (report,) = request_commitment(node.port, refs).on_association
    assert report.event_type == EventType.FAILURES_EXIST
    assert report.referenced() == [refs[2]]
    assert report.failed() == {refs[0][1]: 0x0110, refs[1][1]: 0x0112}
    assert "1 stored instances failed their check" in caplog.text
    assert "run `pacsnode verify`" in caplog.text


def test_released_association_gets_the_report_on_a_new_one_to_its_destination(
    node: Node, fresh_listener: Listener
) -> None:
    refs = [reference("CT_small.dcm"), reference("MR_small.dcm")]
    request = request_commitment(node.port, refs, wait_on_association=False)
    assert request.status == 0
    assert request.released  # no report raced the release into a deadlock
    report = fresh_listener.next()
    assert report.via == "listener"
    assert report.scp_role_proposed is True  # PS3.4 J.3.3.1.3: the node asks to be the SCP
    assert report.event_type == EventType.ALL_COMMITTED
    assert report.information.TransactionUID == request.transaction_uid
    assert report.referenced() == refs


def test_unknown_ae_without_destination_and_closed_association_is_logged(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request = request_commitment(
        node.port, [reference("CT_small.dcm")], calling=STRANGER, wait_on_association=False
    )
    assert request.released
    wait_for(caplog, "result for CT99 (127.0.0.1:")
    assert "qr.destinations has no entry for that AE title" in caplog.text
    assert echo(node.port) == 0  # the node goes on


def test_the_same_ae_with_its_association_open_still_gets_its_report(node: Node) -> None:
    refs = [reference("CT_small.dcm")]
    (report,) = request_commitment(node.port, refs, calling=STRANGER).on_association
    assert report.referenced() == refs


@pytest.mark.parametrize(
    ("information", "action_type", "status"),
    [
        (action_information([("1.2.3", "1.2.3.4")], "1.2.3.5"), 2, ActionStatus.NO_SUCH_ACTION),
        (action_information([], "1.2.3.5"), 1, ActionStatus.INVALID_ARGUMENT_VALUE),
        (action_information([("1.2.3", "1.2.3.4")], ""), 1, ActionStatus.INVALID_ARGUMENT_VALUE),
        (action_information([("", "1.2.3.4")], "1.2.3.5"), 1, ActionStatus.INVALID_ARGUMENT_VALUE),
    ],
    ids=["action-type-2", "no-references", "no-transaction-uid", "item-without-class"],
)
def test_a_request_that_cannot_be_served_is_refused(
    node: Node, information: Dataset, action_type: int, status: int
) -> None:
    request = request_commitment(
        node.port, [], information=information, action_type=action_type, wait_on_association=False
    )
    assert request.status == status


def test_the_audit_trail_names_the_ae_and_counts_and_no_original_uid_is_on_disk(
    node: Node, fresh_listener: Listener
) -> None:
    refs = [reference("CT_small.dcm"), (str(MRImageStorage), str(generate_uid()))]
    request = request_commitment(node.port, refs)
    assert request.on_association[0].event_type == EventType.FAILURES_EXIST
    with node.core.db.read() as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.target, AuditEvent.outcome).where(
                AuditEvent.action == "storage_commitment"
            )
        ).all()
    assert ("dimse:CT01", "2 instances", "1 failed") in rows
    originals = [uid for _, uid in refs] + [reference(n)[1] for n in STORED]
    originals.append(request.transaction_uid)
    for path in node.core.settings.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for uid in originals:
                assert uid.encode() not in content, path.name


# ------------------------------------------------ other settings: separate node per test


@pytest.fixture
def new_association_only(tmp_path: Path, listener: Listener) -> Iterator[Node]:
    settings = node_settings(tmp_path / "data", listener.port, commitment_same_association=False)
    yield from start_node(settings, listener)


def test_with_same_association_off_the_report_always_goes_to_the_destination(
    new_association_only: Node, fresh_listener: Listener
) -> None:
    node = new_association_only
    assert store(node.port, ("CT_small.dcm",)) == [0]
    request = request_commitment(node.port, [reference("CT_small.dcm")], wait_on_association=False)
    assert request.status == 0
    report = fresh_listener.next()
    assert report.via == "listener"
    assert report.referenced() == [reference("CT_small.dcm")]
    refused = request_commitment(
        node.port, [reference("CT_small.dcm")], calling=STRANGER, wait_on_association=False
    )
    assert refused.status == int(ActionStatus.NOT_AUTHORISED) == 0x0124


@pytest.fixture
def deid_off(tmp_path: Path, listener: Listener) -> Iterator[Node]:
    settings = node_settings(tmp_path / "data", listener.port)
    settings = settings.model_copy(update={"deid": DeidSettings(enabled=False)})
    yield from start_node(settings, listener)


def test_with_deidentification_off_the_uids_sent_are_the_stored_ones(deid_off: Node) -> None:
    assert store(deid_off.port, ("CT_small.dcm",)) == [0]
    refs = [reference("CT_small.dcm")]
    (report,) = request_commitment(deid_off.port, refs).on_association
    assert report.event_type == EventType.ALL_COMMITTED
    assert report.referenced() == refs


# ---------------------------------------------------------------------------- unit tests


@pytest.mark.parametrize("retain_uids", [False, True])
def test_stored_uid_is_the_uid_ingest_gives_the_instance(retain_uids: bool) -> None:
    deidentifier = ProfileDeidentifier(
        DeidSettings(retain_uids=retain_uids), Pseudonymizer(b"k" * 32), vault=None
    )
    for name in STORED:
        ds = sample(name)
        original = str(ds.SOPInstanceUID)
        stored = str(deidentifier.deidentify(ds).dataset.SOPInstanceUID)
        assert deidentifier.stored_uid(original) == stored
        assert (stored == original) is retain_uids
    assert PassThroughDeidentifier().stored_uid("1.2.3\0") == "1.2.3"
