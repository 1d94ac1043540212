"""C-MOVE and C-GET against a running node: pynetdicom and dcmtk (movescu, getscu) SCUs, a
pynetdicom storage SCP as the move destination, counts and bytes checked.

One node per module, with four destinations: a pynetdicom storage SCP started here, dcmtk's
movescu (which receives on its own port), an AE that refuses every association, and a port
where nothing listens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import create_engine, select

from catalog.models import Instance, Patient, Series, Study
from scp.retrieve import IdentifierError, retrieve_keys
from tests.peers import HOST, NodeProcess, dcmtk, free_ports, pacsnode_process
from tests.synthetic import SyntheticSpec, generate

pytestmark = pytest.mark.slow

STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove
PATIENT_MOVE = PatientRootQueryRetrieveInformationModelMove


# ------------------------------------------------------------------------------ the archive


@dataclass(frozen=True)
class Stored:
    """What the node holds, read from its catalog (the stored, de-identified UIDs)."""

    patient_of: dict[str, str]  # study UID -> patient ID
    series_of: dict[str, list[str]]  # study UID -> series UIDs
    instances_of: dict[str, list[str]]  # series UID -> SOP Instance UIDs
    blob_of: dict[str, str]  # SOP Instance UID -> blob key
    modality_of: dict[str, str]  # series UID -> modality

    def study_instances(self, study: str) -> list[str]:
        return [uid for series in self.series_of[study] for uid in self.instances_of[series]]


def read_catalog(data_dir: Path) -> Stored:
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                Patient.patient_id,
                Study.study_instance_uid,
                Series.series_instance_uid,
                Series.modality,
                Instance.sop_instance_uid,
                Instance.blob_key,
            )
            .join(Study, Study.patient_pk == Patient.id)
            .join(Series, Series.study_pk == Study.id)
            .join(Instance, Instance.series_pk == Series.id)
            .order_by(Study.id, Series.id, Instance.instance_number)
        ).all()
    engine.dispose()
    stored = Stored({}, {}, {}, {}, {})
    for patient, study, series, modality, sop, blob in rows:
        stored.patient_of[study] = patient
        if series not in stored.series_of.setdefault(study, []):
            stored.series_of[study].append(series)
        stored.instances_of.setdefault(series, []).append(sop)
        stored.blob_of[sop] = blob
        stored.modality_of[series] = modality
    return stored


def blob_path(data_dir: Path, key: str) -> Path:
    return data_dir / "blobs" / key[:2] / key[2:4] / f"{key}.dcm"


def dataset_part(raw: bytes) -> bytes:
    """The encoded data set of a Part 10 stream, without preamble and file meta."""
    meta_length = int(dcmread(BytesIO(raw)).file_meta.FileMetaInformationGroupLength)
    return raw[128 + 4 + 12 + meta_length :]


# -------------------------------------------------------------------------------- the peers


class Receiver:
    """A pynetdicom storage SCP: keeps what it receives, keyed by SOP Instance UID."""

    def __init__(self, port: int, aet: str = "STORESCP") -> None:
        self.received: dict[str, bytes] = {}
        self.associations = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=aet)
        for context in StoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server: ThreadedAssociationServer = ae.start_server(
            (HOST, port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)],
        )

    def _store(self, event: Event) -> int:
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
        return 0x0000

    def _accepted(self, event: Event) -> None:
        self.associations += 1

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.associations = 0


@dataclass(frozen=True)
class Setup:
    node: NodeProcess
    data_dir: Path
    stored: Stored
    receiver: Receiver
    movescu_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("retrieve")
    dataset = generate(root / "synthetic", SyntheticSpec(patients=2))
    data_dir = root / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "import",
            str(root / "synthetic"),
            "--data-dir",
            str(data_dir),
            "--create",
        ],
        check=True,
        capture_output=True,
    )
    receiver_port, movescu_port, refuser_port, nowhere_port, dicom_port, http_port = free_ports(6)
    receiver = Receiver(receiver_port)
    refuser = AE(ae_title="REFUSER")
    refuser.add_supported_context(CTImageStorage)
    refuser.require_calling_aet = ["SOMEONE_ELSE"]
    refuser_server = refuser.start_server((HOST, refuser_port), block=False)
    destinations = [
        {"ae_title": "STORESCP", "host": HOST, "port": receiver_port},
        {"ae_title": "MOVESCU", "host": HOST, "port": movescu_port},
        {"ae_title": "REFUSER", "host": HOST, "port": refuser_port},
        {"ae_title": "NOWHERE", "host": HOST, "port": nowhere_port},
    ]
    env = {"PACSNODE_QR__DESTINATIONS": json.dumps(destinations), "PACSNODE_FSYNC": "0"}
    try:
        with pacsnode_process(
            data_dir, dicom_port=dicom_port, http_port=http_port, env=env
        ) as node:
            stored = read_catalog(data_dir)
            assert len(stored.blob_of) == len(dataset.files)
            yield Setup(node, data_dir, stored, receiver, movescu_port)
    finally:
        receiver.server.shutdown()
        refuser_server.shutdown()


@pytest.fixture
def arrivals(setup: Setup) -> Receiver:
    setup.receiver.clear()
    return setup.receiver


def scu(setup: Setup, *contexts: str, roles: list[str] | None = None):  # type: ignore[no-untyped-def]
    """An association of a pynetdicom SCU with the node (optionally as C-GET storage SCP)."""
    ae = AE(ae_title="QRSCU")
    for context in contexts:
        # The stored files are explicit VR little endian; proposing it first lets C-GET send
        # them byte for byte (pynetdicom would otherwise convert them to implicit VR).
        ae.add_requested_context(context, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    received: dict[str, bytes] = {}

    def on_store(event: Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
        return 0x0000

    assoc = ae.associate(
        HOST,
        setup.node.dicom_port,
        ae_title=setup.node.ae_title,
        ext_neg=[build_role(uid, scp_role=True) for uid in roles or []],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    assoc.received = received
    return assoc


def identifier(level: str, **keys: str | list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def responses(generator: Iterator[tuple[Dataset, Dataset | None]]) -> list[Dataset]:
    """Every response status of a C-MOVE/C-GET, the identifier attached to the last one."""
    statuses = []
    for status, ident in generator:
        if ident is not None:
            status.ident = ident
        statuses.append(status)
    return statuses


def failed_uids(status: Dataset) -> list[str]:
    """The Failed SOP Instance UID List of a final response (one value is a plain str)."""
    value = status.ident.FailedSOPInstanceUIDList
    return [value] if isinstance(value, str) else list(value)


def node_log(setup: Setup) -> str:
    return setup.node.log_path.read_text(errors="replace")


# ----------------------------------------------------------------------------------- C-MOVE


def test_move_study_sends_every_instance_as_stored_with_pending_counts(
    setup: Setup, arrivals: Receiver
) -> None:
    study = next(iter(setup.stored.series_of))
    expected = setup.stored.study_instances(study)
    assoc = scu(setup, STUDY_MOVE)
    statuses = responses(
        assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), "STORESCP", STUDY_MOVE)
    )
    assoc.release()

    pending, final = statuses[:-1], statuses[-1]
    assert int(final.Status) == 0x0000
    assert final.NumberOfCompletedSuboperations == len(expected)
    assert final.NumberOfFailedSuboperations == 0
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(
        range(len(expected) - 1, -1, -1)
    )
    assert [s.NumberOfCompletedSuboperations for s in pending] == list(range(1, len(expected) + 1))
    assert sorted(arrivals.received) == sorted(expected)
    assert arrivals.associations == 1
    for uid, raw in arrivals.received.items():
        stored = blob_path(setup.data_dir, setup.stored.blob_of[uid]).read_bytes()
        assert dataset_part(raw) == dataset_part(stored), uid


def test_move_patient_level_in_the_patient_root_model(setup: Setup, arrivals: Receiver) -> None:
    patient = next(iter(setup.stored.patient_of.values()))
    studies = [s for s, p in setup.stored.patient_of.items() if p == patient]
    expected = [uid for study in studies for uid in setup.stored.study_instances(study)]
    assoc = scu(setup, PATIENT_MOVE)
    final = responses(
        assoc.send_c_move(identifier("PATIENT", PatientID=patient), "STORESCP", PATIENT_MOVE)
    )[-1]
    assoc.release()
    assert int(final.Status) == 0x0000
    assert final.NumberOfCompletedSuboperations == len(expected) > 0
    assert sorted(arrivals.received) == sorted(expected)


def test_move_series_and_image_levels_take_uid_lists(setup: Setup, arrivals: Receiver) -> None:
    study = next(iter(setup.stored.series_of))
    series = setup.stored.series_of[study]
    assoc = scu(setup, STUDY_MOVE)
    final = responses(
        assoc.send_c_move(
            identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID=series),
            "STORESCP",
            STUDY_MOVE,
        )
    )[-1]
    assert int(final.Status) == 0x0000
    assert sorted(arrivals.received) == sorted(setup.stored.study_instances(study))

    arrivals.clear()
    picked = setup.stored.instances_of[series[0]][:3]
    final = responses(
        assoc.send_c_move(
            identifier("IMAGE", SeriesInstanceUID=series[0], SOPInstanceUID=picked),
            "STORESCP",
            STUDY_MOVE,
        )
    )[-1]
    assoc.release()
    assert int(final.Status) == 0x0000
    assert sorted(arrivals.received) == sorted(picked)


def test_move_to_an_unknown_destination_is_refused_with_a801(
    setup: Setup, arrivals: Receiver
) -> None:
    study = next(iter(setup.stored.series_of))
    assoc = scu(setup, STUDY_MOVE)
    statuses = responses(
        assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), "STRANGER", STUDY_MOVE)
    )
    assoc.release()
    assert [int(s.Status) for s in statuses] == [0xA801]
    assert not arrivals.received
    assert "move destination 'STRANGER' is not configured (0xA801)" in node_log(setup)


@pytest.mark.parametrize("destination", ["REFUSER", "NOWHERE"])
def test_move_to_a_destination_that_refuses_or_is_down_fails_with_a_log_line(
    setup: Setup, destination: str
) -> None:
    study = next(iter(setup.stored.series_of))
    assoc = scu(setup, STUDY_MOVE)
    statuses = responses(
        assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), destination, STUDY_MOVE)
    )
    assoc.release()
    assert [int(s.Status) for s in statuses] == [0xA801]
    assert f"destination {destination} ({HOST}:" in node_log(setup)
    assert "refused the association or could not be reached" in node_log(setup)


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"QueryRetrieveLevel": "STUDY"}, "StudyInstanceUID is required at the STUDY level"),
        ({"QueryRetrieveLevel": "VOLUME", "StudyInstanceUID": "1.2.3"}, "QueryRetrieveLevel"),
        ({"StudyInstanceUID": "1.2.3"}, "QueryRetrieveLevel must be"),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, "must not hold wildcards"),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.x"}, "is not a valid UID"),
        (
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2", "SOPInstanceUID": "1.3"},
            "SOPInstanceUID is below the STUDY level",
        ),
        ({"QueryRetrieveLevel": "PATIENT", "PatientID": "X"}, "needs the Patient Root model"),
    ],
)
def test_move_with_an_identifier_that_does_not_match_is_refused_with_a900(
    setup: Setup, arrivals: Receiver, keys: dict[str, str], comment: str
) -> None:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assoc = scu(setup, STUDY_MOVE)
    statuses = responses(assoc.send_c_move(ds, "STORESCP", STUDY_MOVE))
    assoc.release()
    assert int(statuses[-1].Status) == 0xA900
    assert comment in statuses[-1].ErrorComment
    assert not arrivals.received
    assert f"refused (0xA900): {statuses[-1].ErrorComment}" in node_log(setup)


def test_move_of_nothing_succeeds_with_no_sub_operations(setup: Setup, arrivals: Receiver) -> None:
    assoc = scu(setup, STUDY_MOVE)
    statuses = responses(
        assoc.send_c_move(identifier("STUDY", StudyInstanceUID="1.2.3.4"), "STORESCP", STUDY_MOVE)
    )
    assoc.release()
    assert [int(s.Status) for s in statuses] == [0x0000]
    assert statuses[0].NumberOfCompletedSuboperations == 0
    assert arrivals.associations == 0


def test_move_cancelled_by_the_requestor_stops_with_fe00(setup: Setup, arrivals: Receiver) -> None:
    study = max(setup.stored.series_of, key=lambda s: len(setup.stored.study_instances(s)))
    total = len(setup.stored.study_instances(study))
    assoc = scu(setup, STUDY_MOVE)
    context_id = assoc._get_valid_context(STUDY_MOVE, "", "scu").context_id
    statuses = []
    for status, _ in assoc.send_c_move(
        identifier("STUDY", StudyInstanceUID=study), "STORESCP", STUDY_MOVE, msg_id=7
    ):
        statuses.append(status)
        if len(statuses) == 2:
            assoc.send_c_cancel(7, context_id)
    assoc.release()
    final = statuses[-1]
    assert int(final.Status) == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == total
    assert len(arrivals.received) == final.NumberOfCompletedSuboperations < total


def test_move_with_a_missing_blob_fails_that_instance_only(
    setup: Setup, arrivals: Receiver
) -> None:
    study = next(iter(setup.stored.series_of))
    expected = setup.stored.study_instances(study)
    lost = expected[1]
    path = blob_path(setup.data_dir, setup.stored.blob_of[lost])
    aside = path.with_suffix(".aside")
    shutil.move(path, aside)
    try:
        assoc = scu(setup, STUDY_MOVE)
        final = responses(
            assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), "STORESCP", STUDY_MOVE)
        )[-1]
        assoc.release()
    finally:
        shutil.move(aside, path)
    assert int(final.Status) == 0xB000
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == len(expected) - 1
    assert failed_uids(final) == [lost]
    assert sorted(arrivals.received) == sorted(set(expected) - {lost})
    assert f"stored instance {lost} cannot be read (BlobNotFoundError)" in node_log(setup)


def test_dcmtk_movescu_receives_a_study_on_its_own_port(setup: Setup, tmp_path: Path) -> None:
    study = next(iter(setup.stored.series_of))
    out = tmp_path / "moved"
    out.mkdir()
    result = subprocess.run(
        [
            dcmtk("movescu"),
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            setup.node.ae_title,
            "-aem",
            "MOVESCU",
            "+P",
            str(setup.movescu_port),
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            HOST,
            str(setup.node.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stderr
    received = {str(dcmread(f).SOPInstanceUID) for f in out.iterdir()}
    assert received == set(setup.stored.study_instances(study))


# ------------------------------------------------------------------------------------ C-GET


def test_get_sends_back_on_the_same_association(setup: Setup) -> None:
    study = next(iter(setup.stored.series_of))
    expected = setup.stored.study_instances(study)
    get = StudyRootQueryRetrieveInformationModelGet
    assoc = scu(setup, get, CTImageStorage, MRImageStorage, roles=[CTImageStorage, MRImageStorage])
    statuses = responses(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study), get))
    assoc.release()
    final = statuses[-1]
    assert int(final.Status) == 0x0000
    assert final.NumberOfCompletedSuboperations == len(expected)
    assert [s.NumberOfRemainingSuboperations for s in statuses[:-1]] == list(
        range(len(expected) - 1, -1, -1)
    )
    assert sorted(assoc.received) == sorted(expected)
    for uid, raw in assoc.received.items():
        stored = blob_path(setup.data_dir, setup.stored.blob_of[uid]).read_bytes()
        assert dataset_part(raw) == dataset_part(stored), uid


def test_get_of_a_class_the_requestor_did_not_negotiate_fails_those_instances(
    setup: Setup,
) -> None:
    patient = next(iter(setup.stored.patient_of.values()))
    everything = [
        uid
        for study, owner in setup.stored.patient_of.items()
        if owner == patient
        for uid in setup.stored.study_instances(study)
    ]
    mr = {
        uid
        for series, uids in setup.stored.instances_of.items()
        if setup.stored.modality_of[series] == "MR"
        for uid in uids
    } & set(everything)
    get = PatientRootQueryRetrieveInformationModelGet
    assoc = scu(setup, get, CTImageStorage, roles=[CTImageStorage])
    final = responses(assoc.send_c_get(identifier("PATIENT", PatientID=patient), get))[-1]
    assoc.release()
    assert int(final.Status) == 0xB000
    assert final.NumberOfFailedSuboperations == len(mr) > 0
    assert final.NumberOfCompletedSuboperations == len(everything) - len(mr)
    assert set(failed_uids(final)) == mr
    assert set(assoc.received) == set(everything) - mr


def test_get_with_a_bad_identifier_is_refused_with_a900(setup: Setup) -> None:
    get = StudyRootQueryRetrieveInformationModelGet
    assoc = scu(setup, get, CTImageStorage, roles=[CTImageStorage])
    final = responses(assoc.send_c_get(identifier("SERIES", StudyInstanceUID="1.2.3"), get))[-1]
    assoc.release()
    assert int(final.Status) == 0xA900
    assert "SeriesInstanceUID is required at the SERIES level" in final.ErrorComment
    assert not assoc.received


def test_dcmtk_getscu_retrieves_a_series(setup: Setup, tmp_path: Path) -> None:
    study = next(iter(setup.stored.series_of))
    series = setup.stored.series_of[study][0]
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run(
        [
            dcmtk("getscu"),
            "-S",
            "-aec",
            setup.node.ae_title,
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={study}",
            "-k",
            f"SeriesInstanceUID={series}",
            HOST,
            str(setup.node.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stderr
    received = {str(dcmread(f).SOPInstanceUID) for f in out.iterdir()}
    assert received == set(setup.stored.instances_of[series])


# --------------------------------------------------------------- identifiers (no network)


def test_retrieve_keys_narrow_by_the_levels_above() -> None:
    keys = retrieve_keys(
        identifier(
            "IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3", SOPInstanceUID=["1.4", "1.5"]
        ),
        patient_root=False,
    )
    assert keys.study_uids == ("1.2",)
    assert keys.series_uids == ("1.3",)
    assert keys.sop_instance_uids == ("1.4", "1.5")
    assert keys.patient_ids == ()


def test_retrieve_keys_refuse_a_list_above_the_level() -> None:
    with pytest.raises(IdentifierError, match="must be a single value"):
        retrieve_keys(
            identifier("SERIES", StudyInstanceUID=["1.2", "1.3"], SeriesInstanceUID="1.4"),
            patient_root=False,
        )


# ------------------------------------------------------------------- pacsnode send (cohort)


def test_send_a_frozen_cohort_to_a_destination(setup: Setup, arrivals: Receiver) -> None:
    env = {
        **os.environ,
        "PACSNODE_QR__DESTINATIONS": json.dumps(
            [
                {
                    "ae_title": "STORESCP",
                    "host": HOST,
                    "port": setup.receiver.server.server_address[1],
                }
            ]
        ),
    }

    def pacsnode(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node", *args, "--data-dir", str(setup.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    assert pacsnode("cohort", "define", "ct_only", "--modality", "CT").returncode == 0
    frozen = pacsnode("cohort", "freeze", "ct_only")
    assert frozen.returncode == 0, frozen.stderr
    sent = pacsnode("send", "--to", "STORESCP", "--cohort", "ct_only")
    assert sent.returncode == 0, sent.stderr
    ct = {
        uid
        for series, uids in setup.stored.instances_of.items()
        if setup.stored.modality_of[series] == "CT"
        for uid in uids
    }
    assert set(arrivals.received) == ct
    assert f"sent {len(ct)} of {len(ct)} instances to STORESCP" in sent.stdout
    unfrozen = pacsnode("cohort", "define", "mr_only", "--modality", "MR")
    assert unfrozen.returncode == 0
    refused = pacsnode("send", "--to", "STORESCP", "--cohort", "mr_only")
    assert refused.returncode == 1
    assert "Error: cohort mr_only@1 is not frozen" in refused.stderr
