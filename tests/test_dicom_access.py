"""Who may associate with the DICOM AE and what each calling AE title sees.

``allowed_calling_aets`` binds an AE title to the hosts it calls from (a spoofed AE title
from another address is rejected), limits its associations, and maps it to projects: C-FIND,
C-MOVE, C-GET and Storage Commitment show an AE title nothing of another project's studies.

One node per module (the AE in process over a de-identifying core) holds three of pydicom's
test files, each sent by another AE title: CT_small by CT_A (an ``access.projects`` rule puts
it in ``alpha``), MR_small by CT_B (rule: ``beta``), rtdose by CT_C (no rule: its entry's
own project ``gamma``). Every client is a real pynetdicom or dcmtk SCU on loopback; the
"other host" is 127.0.0.2, another loopback address.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from config import ConfigError, load_settings
from config.dicom_access import CallingAE
from ingest.commitment import FailureReason
from node.app import Core, build_core
from scp import DicomServer
from scp.ae import QUERY_RETRIEVE_MODELS
from scp.peers import Peers
from tests.dicom_bytes import sample
from tests.peers import HOST, dcmtk, free_port
from tests.test_commitment import reference, request_commitment
from tests.test_retrieve import Receiver

OTHER_HOST = "127.0.0.2"  # loopback too, but not the address CT_A is bound to
FILES = {"CT_A": "CT_small.dcm", "CT_B": "MR_small.dcm", "CT_C": "rtdose.dcm"}
PROJECT_OF = {"CT_A": "alpha", "CT_B": "beta", "CT_C": "gamma"}
PEERS: list[Any] = [
    "ANYWHERE",  # a plain AE title, as the list held before: any host, every project
    {"ae_title": "CT_A", "hosts": ["127.0.0.1"], "projects": ["alpha"]},
    {"ae_title": "CT_B", "hosts": ["127.0.0.0/8"], "projects": ["beta"]},
    {"ae_title": "CT_C", "hosts": ["127.0.0.1"], "projects": ["gamma"]},
    {"ae_title": "FARAWAY", "hosts": ["10.9.8.7"]},
    {"ae_title": "LIMITED", "max_associations": 1},
    {"ae_title": "TLSONLY", "require_tls": True},
]


# ------------------------------------------------------------------------------ settings


def test_plain_titles_and_entries_mix_in_one_list(tmp_path: Path) -> None:
    config = tmp_path / "pacsnode.toml"
    config.write_text(
        'dicom_host = "0.0.0.0"\n'
        'allowed_calling_aets = ["CT1", { ae_title = "MR_3T", hosts = ["10.0.3.17", '
        '"10.0.4.0/24"], max_associations = 2, projects = ["neuro"] }]\n'
    )
    ct1, mr = load_settings(config).allowed_calling_aets
    assert ct1 == CallingAE.model_validate("CT1")
    assert (mr.ae_title, mr.max_associations, mr.projects) == ("MR_3T", 2, ["neuro"])
    assert [str(net) for net in mr.hosts] == ["10.0.3.17/32", "10.0.4.0/24"]


def test_an_entry_knows_its_hosts() -> None:
    entry = CallingAE.model_validate({"ae_title": "CT1", "hosts": ["10.0.3.0/24", "fd00::7"]})
    assert entry.calls_from("10.0.3.200") and entry.calls_from("::ffff:10.0.3.9")
    assert entry.calls_from("fd00::7")
    assert not entry.calls_from("10.0.4.1") and not entry.calls_from("not an address")
    assert CallingAE(ae_title="ANY").calls_from("192.0.2.1")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["CT1", {"ae_title": "CT1"}], "lists CT1 twice"),
        ([{"ae_title": "CT1", "hosts": ["ct1.hospital.example"]}], "hosts"),
        ([{"ae_title": "CT1", "projects": ["no spaces"]}], "invalid project name"),
        ([{"ae_title": "CT1", "max_associations": 0}], "max_associations"),
        ([{"ae_title": "CT1", "host": "10.0.0.1"}], "host"),
        ([""], "AE title"),
    ],
)
def test_a_bad_entry_says_what_is_wrong(entries: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(allowed_calling_aets=entries)


def test_listeners_beyond_loopback_need_an_allow_list_or_client_certificates() -> None:
    with pytest.raises(ConfigError, match="allowed_calling_aets"):
        load_settings(dicom_host="0.0.0.0")
    assert load_settings(dicom_host="0.0.0.0", allowed_calling_aets=["CT1"])
    pki = {"certificate": "node.crt", "key": "node.key", "ca_file": "ca.crt"}
    open_tls = {"enabled": True, "host": "0.0.0.0", **pki, "require_client_certificate": False}
    with pytest.raises(ConfigError, match=r"dicom_tls\.host '0\.0\.0\.0'.*require_client"):
        load_settings(dicom_tls=open_tls)
    assert load_settings(dicom_tls=open_tls, allowed_calling_aets=["CT1"])
    assert load_settings(dicom_tls={**open_tls, "require_client_certificate": True})
    with pytest.raises(ConfigError, match=r"needs dicom_tls\.certificate, dicom_tls\.key"):
        load_settings(dicom_tls={"enabled": True})
    with pytest.raises(ConfigError, match=r"ca_file \(require_client_certificate\)"):
        load_settings(dicom_tls={"enabled": True, "certificate": "a", "key": "b"})
    with pytest.raises(ConfigError, match="match_calling_aet needs require_client_certificate"):
        load_settings(dicom_tls={**open_tls, "host": HOST, "match_calling_aet": True})


# ---------------------------------------------------------------------------------- node


@dataclass(frozen=True)
class Node:
    server: DicomServer
    core: Core
    receiver: Receiver

    @property
    def port(self) -> int:
        return self.server.port

    def stored_study(self, calling: str) -> str:
        return self.core.pseudonymizer.uid(sample(FILES[calling]).StudyInstanceUID)

    def stored_patient(self, calling: str) -> str:
        sent = sample(FILES[calling])
        return self.core.pseudonymizer.patient_id(
            sent.PatientID, sent.get("IssuerOfPatientID") or ""
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    receiver = Receiver(free_port(), aet="DEST")
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("dicom-access") / "data",
        dicom_port=0,
        fsync=False,
        allowed_calling_aets=PEERS,
        access={
            "projects": [
                {"project": "alpha", "calling_aet": "CT_A"},
                {"project": "beta", "calling_aet": "CT_B"},
            ]
        },
        qr={
            "destinations": [
                {"ae_title": "DEST", "host": HOST, "port": receiver.server.server_address[1]}
            ],
            "commitment_delay": 0,
        },
    )
    core = build_core(settings)
    server = DicomServer(settings, core.ingestor)
    server.start()
    try:
        for calling, name in FILES.items():
            assoc = associate(server.port, calling)
            assert assoc.is_established
            assert int(assoc.send_c_store(sample(name)).Status) == 0
            assoc.release()
        yield Node(server, core, receiver)
    finally:
        server.stop(grace=1)
        core.close()
        receiver.server.shutdown()


def associate(port: int, calling: str, *, source: str = HOST, get: bool = False) -> Association:
    """An association of a pynetdicom SCU calling as ``calling`` from ``source``, proposing
    Verification, Query/Retrieve, Storage Commitment and storage (SCP role for C-GET)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = [Verification, *QUERY_RETRIEVE_MODELS, StorageCommitmentPushModel]
    for uid in contexts:
        ae.add_requested_context(uid)
    storage = [c.abstract_syntax for c in StoragePresentationContexts[: 127 - len(contexts)]]
    for uid in storage:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    received: dict[str, Dataset] = {}

    def on_store(event: Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.dataset
        return 0x0000

    assoc = ae.associate(
        HOST,
        port,
        ae_title="PACSNODE",
        bind_address=(source, 0),
        ext_neg=[build_role(uid, scp_role=True) for uid in storage] if get else None,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assoc.received = received  # type: ignore[attr-defined]
    return assoc


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the requestor received."""
    assert assoc.is_rejected, "the association was not rejected (aborted or accepted?)"
    answer = assoc.acceptor.primitive
    assert answer is not None
    return int(answer.result), int(answer.result_source), int(answer.diagnostic)  # type: ignore[arg-type]


CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)  # permanent, service user (PS3.8 9.3.4)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # transient, service provider (presentation)


def rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "association rejected" in r.getMessage()]


# ---------------------------------------------------------------------------- allow-list


@pytest.mark.slow
def test_a_spoofed_ae_title_from_another_address_is_rejected(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    spoofed = associate(node.port, "CT_A", source=OTHER_HOST)
    assert rejection(spoofed) == CALLING_AE_NOT_RECOGNIZED
    network = associate(node.port, "CT_B", source=OTHER_HOST)  # its entry names 127.0.0.0/8
    assert network.is_established
    network.release()
    assert rejection(associate(node.port, "FARAWAY")) == CALLING_AE_NOT_RECOGNIZED
    assert rejection(associate(node.port, "INTRUDER")) == CALLING_AE_NOT_RECOGNIZED
    spoof, faraway, intruder = rejections(caplog)
    assert spoof.startswith(f"association rejected from 'CT_A' ({OTHER_HOST}:")
    assert spoof.endswith(
        "to 'PACSNODE': calling AE title not allowed from this address (its hosts: 127.0.0.1/32)"
    )
    assert faraway.endswith("not allowed from this address (its hosts: 10.9.8.7/32)")
    assert "'INTRUDER'" in intruder and intruder.endswith("(not in allowed_calling_aets)")


@pytest.mark.slow
def test_dcmtk_sees_the_rejection_and_its_reason(node: Node) -> None:
    """The A-ASSOCIATE-RJ reaches the peer (a rejection from EVT_REQUESTED without kill()
    would reach it as an abort)."""
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", "FARAWAY", "-aec", "PACSNODE", HOST, str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert (
        "Rejected Permanent" in result.stderr and "Calling AE Title Not Recognized" in result.stderr
    )


@pytest.mark.slow
def test_an_ae_title_that_must_use_tls_is_rejected_on_the_plain_port(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    assert rejection(associate(node.port, "TLSONLY")) == CALLING_AE_NOT_RECOGNIZED
    assert rejections(caplog)[-1].endswith(
        "not allowed over plain TCP (require_tls: the TLS port only)"
    )


@pytest.mark.slow
def test_associations_are_limited_per_calling_ae_title(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    first = associate(node.port, "LIMITED")
    assert first.is_established
    try:
        assert rejection(associate(node.port, "LIMITED")) == LOCAL_LIMIT_EXCEEDED
        other = associate(node.port, "ANYWHERE")  # another AE title is not held up
        assert other.is_established
        other.release()
    finally:
        first.release()
    again = associate(node.port, "LIMITED")  # the slot is free once released
    assert again.is_established
    again.release()
    (line,) = rejections(caplog)
    assert "from 'LIMITED'" in line
    assert line.endswith(
        "already has 1 associations open (its max_associations in allowed_calling_aets), transient"
    )


@pytest.mark.slow
def test_the_overall_limit_counts_every_calling_ae_title(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        dicom_port=0,
        fsync=False,
        max_associations=2,
        allowed_calling_aets=["ONE", "TWO"],
    )
    core = build_core(settings)
    server = DicomServer(settings, core.ingestor)
    server.start()
    try:
        held = [associate(server.port, "ONE"), associate(server.port, "TWO")]
        assert all(a.is_established for a in held)
        assert rejection(associate(server.port, "ONE")) == LOCAL_LIMIT_EXCEEDED
        held.pop().release()
        last = associate(server.port, "ONE")
        assert last.is_established
        for assoc in (*held, last):
            assoc.release()
    finally:
        server.stop(grace=1)
        core.close()


# ------------------------------------------------------------------------------ projects


def find(
    port: int,
    calling: str,
    level: str = "STUDY",
    model: str = StudyRootQueryRetrieveInformationModelFind,
) -> set[str]:
    """The Study Instance UIDs (Patient IDs at PATIENT level) a C-FIND of ``calling`` gets."""
    assoc = associate(port, calling)
    assert assoc.is_established
    key = "PatientID" if level == "PATIENT" else "StudyInstanceUID"
    query = Dataset()
    query.QueryRetrieveLevel = level
    query.PatientID = ""
    query.StudyInstanceUID = ""
    if level == "PATIENT":
        del query.StudyInstanceUID
    try:
        found = {
            str(identifier.get(key))
            for status, identifier in assoc.send_c_find(query, model)
            if status and status.Status == 0xFF00
        }
    finally:
        assoc.release()
    return found


@pytest.mark.slow
def test_c_find_matches_only_the_projects_of_the_calling_ae_title(node: Node) -> None:
    studies = {calling: node.stored_study(calling) for calling in FILES}
    patients = {calling: node.stored_patient(calling) for calling in FILES}
    patient_root = PatientRootQueryRetrieveInformationModelFind
    for calling, study in studies.items():
        assert find(node.port, calling) == {study}, calling
        assert find(node.port, calling, "STUDY", patient_root) == {study}, calling
        assert find(node.port, calling, "PATIENT", patient_root) == {patients[calling]}, calling
    assert find(node.port, "ANYWHERE") == set(studies.values())
    assert find(node.port, "ANYWHERE", "PATIENT", patient_root) == set(patients.values())


@pytest.mark.slow
def test_findscu_of_one_project_gets_no_match_of_another(node: Node, tmp_path: Path) -> None:
    def findscu(calling: str, study: str) -> int:
        out = tmp_path / calling
        out.mkdir()
        subprocess.run(
            [
                dcmtk("findscu"),
                "-S",
                "-aet",
                calling,
                "-aec",
                "PACSNODE",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "-X",
                "-od",
                str(out),
                HOST,
                str(node.port),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return len(list(out.iterdir()))

    beta = node.stored_study("CT_B")
    assert findscu("CT_A", beta) == 0
    assert findscu("CT_B", beta) == 1


def move(node: Node, calling: str, study: str) -> tuple[int, int]:
    """(final status, instances the destination received) of a study-level C-MOVE."""
    node.receiver.clear()
    assoc = associate(node.port, calling)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        statuses = [
            s
            for s, _ in assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove)
        ]
    finally:
        assoc.release()
    return int(statuses[-1].Status), len(node.receiver.received)


def get(node: Node, calling: str, study: str) -> tuple[int, int]:
    """(final status, instances received) of a study-level C-GET."""
    assoc = associate(node.port, calling, get=True)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        statuses = [
            s for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    return int(statuses[-1].Status), len(assoc.received)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_c_move_and_c_get_send_nothing_of_another_project(node: Node) -> None:
    alpha, beta = node.stored_study("CT_A"), node.stored_study("CT_B")
    assert move(node, "CT_A", beta) == (0x0000, 0)
    assert get(node, "CT_A", beta) == (0x0000, 0)
    assert move(node, "CT_A", alpha) == (0x0000, 1)
    assert get(node, "CT_A", alpha) == (0x0000, 1)
    assert move(node, "ANYWHERE", beta) == (0x0000, 1)


@pytest.mark.slow
def test_storage_commitment_of_another_projects_instance_is_no_such_instance(node: Node) -> None:
    ct, mr = reference(FILES["CT_A"]), reference(FILES["CT_B"])
    request = request_commitment(node.port, [ct, mr], calling="CT_A")
    (report,) = request.on_association
    assert report.referenced() == [ct]
    assert report.failed() == {mr[1]: FailureReason.NO_SUCH_OBJECT_INSTANCE}
    (everything,) = request_commitment(node.port, [ct, mr], calling="ANYWHERE").on_association
    assert everything.referenced() == [ct, mr] and not everything.failed()


@pytest.mark.slow
def test_a_new_study_no_rule_places_joins_the_projects_of_its_sender(node: Node) -> None:
    gamma = node.stored_study("CT_C")
    assert find(node.port, "CT_C") == {gamma}
    assert gamma not in find(node.port, "CT_A")


# ------------------------------------------------------------------- every DIMSE service

SERVICE_OF = {
    Verification: "C-ECHO",
    StorageCommitmentPushModel: "Storage Commitment",
    **{model: f"C-{model.name.rsplit(' - ', 1)[-1]}" for model in QUERY_RETRIEVE_MODELS},
}


def service(abstract_syntax: str) -> str:
    """The DIMSE service an abstract syntax the node supports belongs to."""
    if abstract_syntax in SERVICE_OF:
        return SERVICE_OF[abstract_syntax]
    if abstract_syntax in {c.abstract_syntax for c in AllStoragePresentationContexts}:
        return "C-STORE"
    raise AssertionError(f"{abstract_syntax} is a service this test does not check: add it")


@pytest.mark.slow
def test_every_dimse_service_refuses_an_unlisted_caller_and_shows_no_other_project(
    node: Node,
) -> None:
    """The node's supported contexts, grouped by service: a caller not on the allow-list
    gets none of them; a caller of another project sees nothing through the services that
    read the archive (each checked by a test above: listed here so a new service fails)."""
    contexts: dict[str, str] = {}
    for context in node.server.ae.supported_contexts:
        contexts.setdefault(service(str(context.abstract_syntax)), str(context.abstract_syntax))
    retrieve = test_c_move_and_c_get_send_nothing_of_another_project
    scoped = {
        "C-FIND": test_c_find_matches_only_the_projects_of_the_calling_ae_title,
        "C-MOVE": retrieve,
        "C-GET": retrieve,
        "Storage Commitment": (
            test_storage_commitment_of_another_projects_instance_is_no_such_instance
        ),
    }
    assert set(contexts) == {"C-ECHO", "C-STORE", *scoped}
    for name, abstract_syntax in contexts.items():
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(abstract_syntax)
        assert rejection(ae.associate(HOST, node.port, ae_title="PACSNODE")) == (
            CALLING_AE_NOT_RECOGNIZED
        ), name
    for check in dict.fromkeys(scoped.values()):
        check(node)


def test_entries_without_hosts_are_a_warning_beyond_loopback() -> None:
    settings = load_settings(
        dicom_host="0.0.0.0",
        allowed_calling_aets=["CT1", {"ae_title": "MR1", "hosts": ["10.0.0.7"]}, "US1"],
    )
    peers = Peers(settings)
    warning = peers.unbound_warning("0.0.0.0", certificates=False)
    assert warning == (
        "allowed_calling_aets: CT1, US1 may associate from any address on 0.0.0.0 (no hosts): "
        "anyone who knows the AE title can; give each its hosts"
    )
    assert peers.unbound_warning("127.0.0.1", certificates=False) is None
    assert peers.unbound_warning("0.0.0.0", certificates=True) is None
