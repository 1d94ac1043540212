"""De-identification end to end: a running node (at DEBUG) fed over C-STORE by dcmtk and
pynetdicom; its archive checked by ``pacsnode deid check``, grepped for the originals, and
re-identified by an admin through the CLI and the HTTP route."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import create_engine, select

from catalog.models import AuditEvent
from config import load_settings
from deid import Pseudonymizer, load_pseudonymizer
from tests.peers import NodeProcess, free_port, pacsnode_process, storescu
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

pytestmark = pytest.mark.slow

PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate(tmp_path_factory.mktemp("synthetic"), SyntheticSpec(patients=4, ct_slices=4))


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, dataset: SyntheticDataset
) -> Iterator[NodeProcess]:
    """A node at DEBUG that has received the synthetic data and pydicom's test files."""
    data_dir = tmp_path_factory.mktemp("deid-node") / "data"
    with pacsnode_process(
        data_dir,
        dicom_port=free_port(),
        http_port=free_port(),
        env={"PACSNODE_LOG_LEVEL": "DEBUG", "PACSNODE_ACCESS__METHODS": '["token"]'},
    ) as running:
        assert storescu(list(dataset.files), port=running.dicom_port, aet_called="PACSNODE").ok
        ae = AE(ae_title="PYSCU")
        ae.requested_contexts = StoragePresentationContexts[:120]
        assoc = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACSNODE")
        for name in PYDICOM_FILES:
            status = assoc.send_c_store(dcmread(get_testdata_file(name)))
            assert int(status.Status) == 0, name
        assoc.release()
        yield running


def data_dir_of(node: NodeProcess) -> Path:
    return node.log_path.parent / "data"


def pacsnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=300
    )


def pseudonymizer(node: NodeProcess) -> Pseudonymizer:
    return load_pseudonymizer(load_settings(data_dir=data_dir_of(node)), create=False)


def test_the_archive_has_zero_findings_and_the_originals_do_not(
    node: NodeProcess, dataset: SyntheticDataset
) -> None:
    data = str(data_dir_of(node))
    archive = pacsnode("deid", "check", "--all", "--data-dir", data, "--json")
    assert archive.returncode == 0, archive.stdout + archive.stderr
    report = json.loads(archive.stdout)
    assert report["checked"] == len(dataset.files) + len(PYDICOM_FILES)
    assert report["findings"] == []
    assert report["originals_searched"] > 4 * len(dataset.patients)
    originals = pacsnode("deid", "check", str(dataset.files[0]), "--data-dir", data, "--json")
    assert originals.returncode == 1
    problems = {f["keyword"]: f["problem"] for f in json.loads(originals.stdout)["findings"]}
    assert problems["PatientID"] == "not a pseudonym"
    assert problems["OtherPatientIDsSequence"] == "present, but the profile removes it"
    assert "original patient name" in problems["ImageComments"]
    phi = dataset.patients[0]
    assert phi.patient_id not in originals.stdout and phi.patient_name not in originals.stdout


def _encodings(value: str) -> set[bytes]:
    found = set()
    for encoding in ("utf-8", "latin-1", "gb18030"):
        try:
            found.add(value.encode(encoding))
        except UnicodeEncodeError:
            continue
    return found


def test_no_original_identifier_is_in_any_file_or_log_line(
    node: NodeProcess, dataset: SyntheticDataset
) -> None:
    needles: set[bytes] = set()
    for phi in dataset.patients:
        values = [phi.patient_id, phi.patient_name, *phi.accession_numbers, *phi.study_uids]
        values += [group for group in phi.patient_name.split("=") if len(group) >= 4]
        for value in values:
            needles |= _encodings(value)
    files = [p for p in data_dir_of(node).rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in files) and any("catalog" in p.name for p in files)
    for path in files:
        content = path.read_bytes()
        leaked = [n for n in needles if n in content]
        assert not leaked, f"{path.name} holds an original identifier"
    log = node.log_path.read_bytes()
    assert b"DEBUG" in log and b"stored 2.25." in log
    assert not [n for n in needles if n in log]


def test_an_admin_recovers_the_originals_and_every_read_is_audited(
    node: NodeProcess, dataset: SyntheticDataset
) -> None:
    data = str(data_dir_of(node))
    pseudo = pseudonymizer(node)
    phi = dataset.patients[1]
    issuer = dcmread(dataset.files[len(dataset.files) // 4 + 1]).IssuerOfPatientID
    pseudo_id = pseudo.patient_id(phi.patient_id, issuer)

    reason = ("--reason", "tumour board")
    cli = pacsnode("reidentify", "patient", pseudo_id, "--studies", *reason, "--data-dir", data)
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout)
    assert answer["originals"]["patient_id"] == phi.patient_id
    assert answer["originals"]["patient_name"] == phi.patient_name
    assert answer["originals"]["patient_birth_date"] == phi.birth_date
    assert {s["accession_number"] for s in answer["studies"]} == set(phi.accession_numbers)
    unknown = pacsnode("reidentify", "patient", "PNOTAPATIENT0000", *reason, "--data-dir", data)
    assert unknown.returncode == 1 and "Error:" in unknown.stderr

    accession = pseudo.accession_number(phi.accession_numbers[0])
    url = f"{node.url}/api/admin/reidentify/accession/{accession}"

    def get(query: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(url + query, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer.update(json.loads(response.read()))
                assert response.headers["Cache-Control"] == "no-store"
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    admin = pacsnode("tokens", "create", "admin", "--role", "admin", "--data-dir", data).stdout
    viewer = pacsnode("tokens", "create", "viewer", "--role", "viewer", "--data-dir", data).stdout
    answer = {}
    assert get("?reason=audit%20of%20a%20lesion", None) == 401
    assert get("?reason=audit%20of%20a%20lesion", viewer.strip()) == 403
    assert get("", admin.strip()) == 422  # a reason must be stated
    assert get("?reason=audit%20of%20a%20lesion", admin.strip()) == 200
    assert answer["originals"]["accession_number"] == phi.accession_numbers[0]

    engine = create_engine(f"sqlite:///{data}/catalog.sqlite")
    with engine.connect() as connection:
        events = connection.execute(
            select(
                AuditEvent.action,
                AuditEvent.target,
                AuditEvent.outcome,
                AuditEvent.actor,
                AuditEvent.door,
                AuditEvent.remote,
                AuditEvent.detail,
            ).where(AuditEvent.action == "reidentify")
        ).all()
    engine.dispose()
    actions = {(e.target.rsplit(":", 1)[0], e.outcome) for e in events}
    assert actions == {
        ("patient", "found"),
        ("studies of patient", "found"),
        ("patient", "not_found"),
        ("accession", "found"),
    }
    assert all(json.loads(e.detail)["reason"] == "tumour board" for e in events if e.door == "cli")
    http = [e for e in events if e.door == "http"]
    assert len(http) == 1 and http[0].actor == "token:admin"
    assert http[0].remote.startswith("127.0.0.1:")
    assert json.loads(http[0].detail) == {"reason": "audit of a lesion"}
    audit_text = repr(events)
    assert phi.patient_id not in audit_text and phi.accession_numbers[0] not in audit_text


def test_burned_in_text_is_refused_over_c_store_with_the_reason(node: NodeProcess) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="PACSNODE")
    response = assoc.send_c_store(ds)
    assoc.release()
    assert int(response.Status) == 0xC001
    assert response.ErrorComment == "pixel data may show PHI (burned-in annotation)"
