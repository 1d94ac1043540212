"""Project rules end to end: studies stored through each door join the projects the
``access.projects`` rules (or the uploader's projects) give, and scoped callers see exactly
those.

One node per module, configured from a TOML file (the ``pacsnode import`` and ``pacsnode
deid quarantine release`` commands read the same file): rules on the called AE title, the
calling AE title, the import door and a header value (Institution Name, as received);
STOW-RS uploaders scoped to their own projects; the burned-in policy holds ultrasound back
for review.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from typer.testing import CliRunner

from access.credentials import Credentials
from catalog.models import Instance, QuarantinedInstance, Study, StudyProject
from config import load_settings
from node.app import Node
from node.cli import app as cli
from tests.dicom_bytes import part10, sample

CONFIG = """
[access]
methods = ["token"]
default_project = "unsorted"

[[access.projects]]
project = "ct-dept"
called_aet = "CT_ARCHIVE"

[[access.projects]]
project = "mod-a"
calling_aet = "MOD_A"

[[access.projects]]
project = "imports"
door = "folder"

[[access.projects]]
project = "general"
attribute = "InstitutionName"
value = "General Hospital of *"

[deid]
burned_in_policy = "quarantine"
"""

INSTITUTION = "General Hospital of Secretville"
"""An Institution Name a rule matches: it must never be stored, only the project's name."""


@dataclass
class Running:
    node: Node
    config: Path
    data_dir: Path
    tokens: dict[str, str]

    def client(self, caller: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.node.http_port}",
            headers={"Authorization": f"Bearer {self.tokens[caller]}"},
            timeout=60,
        )

    def stored(self, original_uid: str) -> str:
        return self.node.core.pseudonymizer.uid(original_uid)

    def projects_of(self, original_study_uid: str) -> set[str]:
        """The projects of a study, straight from the catalog."""
        with self.node.core.db.read() as session:
            return set(
                session.scalars(
                    select(StudyProject.project)
                    .join(Study, Study.id == StudyProject.study_pk)
                    .where(Study.study_instance_uid == self.stored(original_study_uid))
                )
            )

    def sees(self, caller: str, original_study_uid: str) -> bool:
        """Whether ``caller`` finds the study over QIDO-RS and reads its metadata."""
        uid = self.stored(original_study_uid)
        with self.client(caller) as client:
            found = client.get("/dicom-web/studies", params={"StudyInstanceUID": uid})
            metadata = client.get(f"/dicom-web/studies/{uid}/metadata")
        assert found.status_code in (200, 204) and metadata.status_code in (200, 404)
        listed = found.status_code == 200 and bool(found.json())
        assert listed == (metadata.status_code == 200)
        return listed


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("projects")
    config = folder / "pacsnode.toml"
    config.write_text(CONFIG)
    data_dir = folder / "data"
    node = Node(
        load_settings(
            config,
            data_dir=data_dir,
            fsync=False,
            dicom_port=0,
            http_port=0,
            require_called_aet=False,
        )
    )
    node.start()
    try:
        credentials = Credentials(node.core.db, node.settings.access)
        tokens = {"admin": credentials.create_token("admin", ["admin"], None, "test")}
        for project in ("ct-dept", "mod-a", "imports", "general", "unsorted", "up-x", "up-y"):
            tokens[project] = credentials.create_token(
                project, ["viewer", "uploader"], [project], "test"
            )
        yield Running(node, config, data_dir, tokens)
    finally:
        node.stop()


def new_instance(name: str = "CT_small.dcm", **changes: str) -> Dataset:
    """pydicom's ``name`` as a new study (fresh UIDs), with ``changes`` applied."""
    ds = sample(name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def c_store(running: Running, ds: Dataset, *, calling: str, called: str) -> None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", running.node.dicom.port, ae_title=called)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def stow(running: Running, caller: str, ds: Dataset) -> httpx.Response:
    boundary = uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with running.client(caller) as client:
        return client.post(
            "/dicom-web/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )


# ------------------------------------------------------------------------------- C-STORE


@pytest.mark.parametrize(
    ("calling", "called", "projects"),
    [
        ("MOD_A", "PACSNODE", {"mod-a"}),
        ("OTHER", "CT_ARCHIVE", {"ct-dept"}),
        ("MOD_A", "CT_ARCHIVE", {"mod-a", "ct-dept"}),
        ("OTHER", "PACSNODE", {"unsorted"}),
    ],
)
def test_c_store_joins_the_projects_of_the_ae_title_rules(
    running: Running, calling: str, called: str, projects: set[str]
) -> None:
    ds = new_instance()
    c_store(running, ds, calling=calling, called=called)
    study = str(ds.StudyInstanceUID)
    assert running.projects_of(study) == projects
    for project in ("ct-dept", "mod-a", "unsorted", "up-x"):
        assert running.sees(project, study) == (project in projects), project
    assert running.sees("admin", study)


def test_a_duplicate_sent_for_a_second_project_joins_it(running: Running) -> None:
    ds = new_instance()
    c_store(running, ds, calling="MOD_A", called="PACSNODE")
    study = str(ds.StudyInstanceUID)
    assert running.projects_of(study) == {"mod-a"}
    assert not running.sees("ct-dept", study)
    c_store(running, ds, calling="OTHER", called="CT_ARCHIVE")  # the same instance again
    assert running.projects_of(study) == {"mod-a", "ct-dept"}
    assert running.sees("ct-dept", study) and running.sees("mod-a", study)
    with running.node.core.db.read() as session:
        copies = session.scalars(
            select(Instance.id).where(
                Instance.sop_instance_uid == running.stored(ds.SOPInstanceUID)
            )
        ).all()
    assert len(copies) == 1


# ------------------------------------------------------------------------------- STOW-RS


def test_stow_puts_a_new_study_in_the_uploaders_projects(running: Running) -> None:
    ds = new_instance()
    assert stow(running, "up-x", ds).status_code == 200
    study = str(ds.StudyInstanceUID)
    assert running.projects_of(study) == {"up-x"}
    assert running.sees("up-x", study) and not running.sees("up-y", study)


def test_an_uploader_gains_nothing_by_sending_into_another_projects_study(
    running: Running,
) -> None:
    """Uploader y sends a new instance of x's study, and then a copy of x's instance: both
    are stored (or recognised), and the study stays x's only: y still finds nothing of it,
    not even the instance y sent."""
    first = new_instance()
    assert stow(running, "up-x", first).status_code == 200
    study = str(first.StudyInstanceUID)
    second = new_instance()
    second.StudyInstanceUID, second.SeriesInstanceUID = study, first.SeriesInstanceUID
    sent = stow(running, "up-y", second)
    assert sent.status_code == 200, sent.text
    assert stow(running, "up-y", first).status_code == 200  # a duplicate
    assert running.projects_of(study) == {"up-x"}
    assert not running.sees("up-y", study)
    with running.client("up-y") as client:
        sop = running.stored(second.SOPInstanceUID)
        found = client.get("/dicom-web/instances", params={"SOPInstanceUID": sop})
        assert found.status_code == 204 or found.json() == []
        wado = client.get(
            "/dicom-web/wado",
            params={
                "requestType": "WADO",
                "studyUID": running.stored(study),
                "seriesUID": running.stored(second.SeriesInstanceUID),
                "objectUID": sop,
                "contentType": "application/dicom",
            },
        )
        assert wado.status_code == 404
    with running.client("up-x") as client:
        series = client.get(f"/dicom-web/studies/{running.stored(study)}/instances").json()
    assert len(series) == 2  # x's study holds y's instance


# ------------------------------------------------------------------------------- import


def test_import_through_the_folder_door_joins_its_project(running: Running, tmp_path: Path) -> None:
    ds = new_instance("MR_small.dcm")
    ds.save_as(tmp_path / "mr.dcm", enforce_file_format=True)
    imported = CliRunner().invoke(
        cli,
        [
            "import",
            str(tmp_path),
            "--config",
            str(running.config),
            "--data-dir",
            str(running.data_dir),
        ],
    )
    assert imported.exit_code == 0, imported.output
    study = str(ds.StudyInstanceUID)
    assert running.projects_of(study) == {"imports"}
    assert running.sees("imports", study) and not running.sees("unsorted", study)


# ------------------------------------------------------------------------------- header rule


def test_a_header_value_rule_reads_the_value_as_received_and_stores_only_the_project(
    running: Running,
) -> None:
    """Institution Name is removed by de-identification; the rule read it before, and only
    the project's name is kept: the value is nowhere in the data folder (catalog, its
    write-ahead log, blobs) nor in any answer."""
    ds = new_instance(InstitutionName=INSTITUTION)
    c_store(running, ds, calling="OTHER", called="PACSNODE")
    via_stow = new_instance("MR_small.dcm", InstitutionName=INSTITUTION)
    assert stow(running, "up-x", via_stow).status_code == 200
    assert running.projects_of(str(ds.StudyInstanceUID)) == {"general"}
    assert running.projects_of(str(via_stow.StudyInstanceUID)) == {"general"}
    assert running.sees("general", str(ds.StudyInstanceUID))
    assert not running.sees("up-x", str(via_stow.StudyInstanceUID))  # a rule matched
    with running.client("general") as client:
        answers = [
            client.get("/dicom-web/studies", params={"includefield": "all"}).text,
            client.get(f"/dicom-web/studies/{running.stored(ds.StudyInstanceUID)}/metadata").text,
        ]
    needle = "Secretville"
    assert not [a for a in answers if needle in a]
    found = [
        path
        for path in running.data_dir.rglob("*")
        if path.is_file() and needle.encode() in path.read_bytes()
    ]
    assert found == []


# ------------------------------------------------------------------------------- quarantine


def test_a_released_instance_keeps_the_projects_it_arrived_with(running: Running) -> None:
    """Ultrasound is held back (burned-in policy); released by the operator's CLI, its new
    study joins the projects of the rule (C-STORE from MOD_A) or of the uploader (STOW-RS)
    it arrived with, not the default project."""
    by_rule = new_instance(Modality="US")
    c_store(running, by_rule, calling="MOD_A", called="PACSNODE")
    by_uploader = new_instance(Modality="US")
    assert stow(running, "up-y", by_uploader).status_code == 200
    with running.node.core.db.read() as session:
        held = set(session.scalars(select(QuarantinedInstance.sop_instance_uid)))
    uids = [running.stored(ds.SOPInstanceUID) for ds in (by_rule, by_uploader)]
    assert set(uids) <= held
    for ds in (by_rule, by_uploader):
        assert running.projects_of(str(ds.StudyInstanceUID)) == set()  # not indexed yet
    released = CliRunner().invoke(
        cli,
        [
            "deid",
            "quarantine",
            "release",
            *uids,
            "--config",
            str(running.config),
            "--data-dir",
            str(running.data_dir),
        ],
    )
    assert released.exit_code == 0, released.output
    assert running.projects_of(str(by_rule.StudyInstanceUID)) == {"mod-a"}
    assert running.projects_of(str(by_uploader.StudyInstanceUID)) == {"up-y"}
    assert running.sees("mod-a", str(by_rule.StudyInstanceUID))
    assert running.sees("up-y", str(by_uploader.StudyInstanceUID))
    assert not running.sees("unsorted", str(by_uploader.StudyInstanceUID))
