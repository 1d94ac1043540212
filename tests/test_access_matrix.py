"""Nobody sees another project's studies: every HTTP route, called by callers of project A
with the UIDs, ids and names of project B.

One node per module (``access.methods = ["token"]``), two projects, each with real pydicom
files stored over C-STORE (a calling-AE rule puts them in their project), synthetic
instances sent over STOW-RS by the project's uploader, reports with labels, and a frozen
cohort. The route walk is the one of ``tests/test_access_routes.py``: a route added later is
called too. For every route a caller of A (an administrator, a researcher and a viewer
scoped to A) gets ``404`` for a path naming something of B, and no UID, pseudonym or
cohort name of B in any successful answer.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from access.credentials import Credentials
from catalog.models import (
    Instance,
    Label,
    Patient,
    ReportLabel,
    ReportLink,
    Series,
    Study,
    StudyPatient,
    StudyProject,
)
from config import load_settings
from dashboard import PAGES
from dashboard.pages import DATASETS
from node.app import Node
from tests.dicom_bytes import sample
from tests.synthetic import SyntheticSpec, generate
from tests.test_access_routes import app_of, routes

SPEC = SyntheticSpec(patients=2, ct_slices=2, mr_slices=1, rows=16, columns=16, seed=1207)
"""Two synthetic patients (a CT and an MR study each): one for each project."""

ROLES = ("admin", "researcher", "viewer", "uploader")
CALLERS_OF_A = ("a-admin", "a-researcher", "a-viewer")
"""The callers of A whose answers are checked on every route (the uploader has a route of
its own: ``POST /api/reports``)."""


@dataclass
class Project:
    """What a project holds, as the catalog stores it (de-identified)."""

    name: str
    original_patients: list[tuple[str, str]] = field(default_factory=list)
    """(PatientID, AccessionNumber) as sent, for the reports."""
    studies: list[str] = field(default_factory=list)
    series: list[tuple[str, str]] = field(default_factory=list)
    instances: list[tuple[str, str, str]] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    accessions: list[str] = field(default_factory=list)
    reports: list[int] = field(default_factory=list)
    report_tasks: list[tuple[int, str]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    cohort: str = ""
    cohort_id: int = 0

    def secrets(self) -> set[str]:
        """Strings that must never reach a caller of another project."""
        return {
            *self.studies,
            *(uid for _, uid in self.series),
            *(uid for _, _, uid in self.instances),
            *self.patients,
            *self.accessions,
            self.cohort,
        } - {""}


@dataclass
class World:
    node: Node
    base: str
    tokens: dict[str, str]
    a: Project
    b: Project
    unlinked_report: int

    def client(self, caller: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.tokens[caller]}"},
            timeout=60,
        )


def c_store(node: Node, datasets: list[Dataset], calling_aet: str) -> None:
    ae = AE(ae_title=calling_aet)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.dicom.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def stow(client: httpx.Client, files: list[Path]) -> None:
    boundary = uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
        for path in files
    )
    answer = client.post(
        "/dicom-web/studies",
        content=body + f"--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert answer.status_code == 200, answer.text


def pydicom_files(project: str) -> list[Dataset]:
    """pydicom's own files, with an accession number a report can name."""
    files = ["CT_small.dcm", "rtplan.dcm"] if project == "A" else ["MR_small.dcm", "rtdose.dcm"]
    datasets = []
    for number, name in enumerate(files):
        ds = sample(name)
        ds.AccessionNumber = f"ACC-{project}{number}"
        ds.StudyDate = "20240305"
        datasets.append(ds)
    return datasets


def report(patient_id: str, accession: str, impression: str) -> dict[str, Any]:
    return {
        "report_type": "radiology",
        "patient_id": patient_id,
        "accession_number": accession,
        "exam_date": "2024-03-05",
        "impression": impression,
    }


IMPRESSIONS = (
    "Hypoenhancing liver lesion, suspicious for metastasis.",
    "Possible small nodule in the right lung, cannot exclude malignancy.",
)


def collect(node: Node, project: Project) -> None:
    """Fill in what the catalog holds of ``project``."""
    member = select(StudyProject.study_pk).where(StudyProject.project == project.name)
    with node.core.db.read() as session:
        for uid, accession in session.execute(
            select(Study.study_instance_uid, Study.accession_number).where(Study.id.in_(member))
        ):
            project.studies.append(uid)
            if accession:
                project.accessions.append(accession)
        project.patients = sorted(
            session.scalars(
                select(Patient.patient_id)
                .join(StudyPatient, StudyPatient.patient_pk == Patient.id)
                .where(StudyPatient.study_pk.in_(member))
                .distinct()
            )
        )
        project.series = [
            (study, series)
            for study, series in session.execute(
                select(Study.study_instance_uid, Series.series_instance_uid)
                .join(Study, Series.study_pk == Study.id)
                .where(Study.id.in_(member))
            )
        ]
        project.instances = [
            tuple(row)  # type: ignore[misc]
            for row in session.execute(
                select(
                    Study.study_instance_uid,
                    Series.series_instance_uid,
                    Instance.sop_instance_uid,
                )
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .where(Study.id.in_(member))
            )
        ]
        project.reports = sorted(
            set(
                session.scalars(select(ReportLink.report_pk).where(ReportLink.study_pk.in_(member)))
            )
        )
        project.report_tasks = [
            (pk, task)
            for pk, task in session.execute(
                select(ReportLabel.report_pk, ReportLabel.task).where(
                    ReportLabel.report_pk.in_(project.reports)
                )
            )
        ]
        project.labels = sorted(session.scalars(select(Label.id).where(Label.study_pk.in_(member))))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("matrix")
    synthetic = generate(folder / "synthetic", SPEC)
    node = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={
                "methods": ["token"],
                "projects": [
                    {"project": "A", "calling_aet": "MOD_A"},
                    {"project": "B", "calling_aet": "MOD_B"},
                ],
            },
        )
    )
    node.start()
    try:
        credentials = Credentials(node.core.db, node.settings.access)
        tokens = {"admin": credentials.create_token("admin", ["admin"], None, "test")}
        for project in ("a", "b"):
            for role in ROLES:
                name = f"{project}-{role}"
                tokens[name] = credentials.create_token(name, [role], [project.upper()], "test")
        world = World(
            node,
            f"http://127.0.0.1:{node.http_port}",
            tokens,
            Project("A"),
            Project("B"),
            0,
        )
        half = len(synthetic.files) // 2
        for project, files, patient in (
            (world.a, list(synthetic.files[:half]), synthetic.patients[0]),
            (world.b, list(synthetic.files[half:]), synthetic.patients[1]),
        ):
            datasets = pydicom_files(project.name)
            c_store(node, datasets, f"MOD_{project.name}")
            with world.client(f"{project.name.lower()}-uploader") as uploader:
                stow(uploader, files)
            project.original_patients = [
                (str(ds.PatientID), str(ds.AccessionNumber)) for ds in datasets
            ]
            first = dcmread(files[0], stop_before_pixels=True)
            project.original_patients.append((patient.patient_id, str(first.AccessionNumber)))
        with world.client("admin") as admin:
            for project in (world.a, world.b):
                for (patient_id, accession), impression in zip(
                    project.original_patients, IMPRESSIONS * 2, strict=False
                ):
                    answer = admin.post(
                        "/api/reports", json=report(patient_id, accession, impression)
                    )
                    assert answer.status_code == 201, answer.text
                    assert answer.json()["links"], "the report links to its study"
            unlinked = admin.post("/api/reports", json=report("NOBODY-1", "NO-ACC", IMPRESSIONS[0]))
            assert unlinked.status_code == 201 and not unlinked.json()["links"]
            world.unlinked_report = unlinked.json()["report_id"]
        for project in (world.a, world.b):
            project.cohort = f"cohort-{project.name.lower()}-{uuid4().hex[:8]}"
            with world.client(f"{project.name.lower()}-researcher") as researcher:
                defined = researcher.post("/api/cohorts", json={"name": project.cohort})
                assert defined.status_code == 201, defined.text
                project.cohort_id = defined.json()["id"]
                frozen = researcher.post(f"/api/cohorts/{project.cohort}/freeze")
                assert frozen.status_code == 200, frozen.text
            collect(node, project)
        assert not set(world.a.studies) & set(world.b.studies)
        assert len(world.b.studies) == 4 and world.b.labels and world.b.report_tasks
        yield world
    finally:
        node.stop()


# ---------------------------------------------------------------------------- the walk


def _variants(path: str, method: str, b: Project, world: World) -> list[tuple[str, Any]]:
    """``(url, json body)`` of the calls of one route that name B (or search for it)."""
    study, series, sop = b.instances[0]
    if method == "POST" and path.startswith("/dicom-web/studies"):
        return []  # STOW-RS into B's study: tests/test_access_projects.py
    if "{kind}" in path:
        return [
            (path.replace("{kind}/{pseudonym}", f"{kind}/{value}") + "?reason=audit", None)
            for kind, value in (
                ("patient", b.patients[0]),
                ("study", study),
                ("series", series),
                ("accession", b.accessions[0]),
            )
        ]
    if "{ref}" in path:
        refs = (b.cohort, f"{b.cohort}@1", str(b.cohort_id))
        return [(path.replace("{ref}", ref), None) for ref in refs]
    if "{report_id}" in path:
        report_pk, task = b.report_tasks[0]
        body = {"reviewer": "Dr. A", "value": 1}
        return [
            (path.replace("{report_id}", str(report_pk)).replace("{task}", task), body),
            (path.replace("{report_id}", str(world.unlinked_report)).replace("{task}", task), body),
        ]
    if "{label_id}" in path:
        return [(path.replace("{label_id}", str(b.labels[0])), {"reviewer": "Dr. A", "value": 1})]
    if "{study" in path:
        filled = (
            path.replace("{study}", study)
            .replace("{study_uid}", study)
            .replace("{series}", series)
            .replace("{sop}", sop)
            .replace("{frame_list}", "1")
            .replace("{frame}", "1")
            .replace("{path:path}", "7FE00010")
        )
        return [(filled, None)]
    if path in ("/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"):
        return [
            (path, None),
            (f"{path}?includefield=all", None),
            (f"{path}?StudyInstanceUID={study}", None),
            (f"{path}?PatientID={b.patients[0]}", None),
            (f"{path}?AccessionNumber={b.accessions[0]}", None),
            (f"{path}?SeriesInstanceUID={series}&includefield=all", None),
            (f"{path}?SOPInstanceUID={sop}&includefield=all", None),
        ]
    if path == "/dicom-web/wado":
        return [
            (
                f"{path}?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
                f"&contentType={content}",
                None,
            )
            for content in ("application/dicom", "image/jpeg")
        ]
    if path == "/api/cohorts" and method == "POST":
        return [("/api/cohorts", {"name": b.cohort})]
    if path == "/api/cohorts/preview":
        return [(path, {}), (path, {"filters": {"modalities": ["MR", "RTDOSE"]}})]
    if path == "/api/reports" and method == "POST":
        return []  # the uploader's own test
    if path == "/api/labels/review":
        return [(path, None), (f"{path}?limit=1000", None)]
    if path == "/api/studies":
        return [
            (f"{path}?limit=500", None),
            (f"{path}?PatientID={b.patients[0]}", None),
            (f"{path}?AccessionNumber={b.accessions[0]}&source=MOD_B", None),
            (f"{path}?task={b.report_tasks[0][1]}&limit=500", None),
        ]
    return [(path, None)]


PAGE_PERMISSIONS = {page.path: page.permission for page in PAGES} | {
    f"{DATASETS.path}/{{task}}": DATASETS.permission
}


def test_every_route_gives_a_caller_of_another_project_nothing(world: World) -> None:
    app = app_of(world.node)
    secrets = world.b.secrets()
    called = 0
    for caller in CALLERS_OF_A:
        with world.client(caller) as client:
            for path, methods, stated in routes(app):
                (requirement,) = stated
                permission = requirement.permission
                for method in sorted(methods - {"HEAD"}):
                    for url, body in _variants(path, method, world.b, world):
                        answer = client.request(method, url, json=body)
                        called += 1
                        where = f"{caller}: {method} {url} -> {answer.status_code}"
                        if answer.status_code in (401, 403):
                            # a dashboard page is public, but tells a role without its
                            # permission so (a shell: its data comes from /api)
                            needed = permission or PAGE_PERMISSIONS.get(path)
                            assert needed is not None, where
                            assert not _allowed(world, caller, needed.value), where
                            continue
                        if permission is not None and "{" in path:  # the path names B
                            assert answer.status_code == 404, where
                        elif body == {"name": world.b.cohort}:
                            assert answer.status_code == 409, where
                        # an error may quote what the caller sent; nothing else of B, ever
                        sent = url + json.dumps(body)
                        leaked = [
                            s
                            for s in secrets
                            if s in answer.text and (answer.is_success or s not in sent)
                        ]
                        if answer.is_success:
                            leaked += [s for s in secrets if s.encode() in answer.content]
                        assert not leaked, f"{where} names {sorted(set(leaked))}"
    assert called > 150


def _allowed(world: World, caller: str, permission: str) -> bool:
    role = caller.split("-", 1)[1]
    granted = world.node.settings.access.roles[role]
    return "*" in granted or permission in granted


# ----------------------------------------------------------------- what A does see


def test_a_caller_of_a_sees_their_own(world: World) -> None:
    """The walk would pass on a node that answers nothing: a's callers find a's things."""
    a = world.a
    with world.client("a-researcher") as client:
        studies = client.get("/dicom-web/studies").json()
        assert sorted(s["0020000D"]["Value"][0] for s in studies) == sorted(a.studies)
        for pk in a.reports:
            assert client.get(f"/api/reports/{pk}").status_code == 200
        labels = client.get(f"/api/studies/{a.studies[0]}/labels")
        assert labels.status_code == 200
        assert client.get(f"/api/cohorts/{a.cohort}").json()["projects"] == ["A"]
        assert [c["name"] for c in client.get("/api/cohorts").json()] == [a.cohort]


def test_a_report_shows_only_the_links_to_the_callers_studies(world: World) -> None:
    """One report linked to a study of A and one of B (same accession number): a caller of
    A reads it with A's link only, a caller of B with B's, the administrator with both."""
    with world.client("admin") as admin:
        patient_a, accession_a = world.a.original_patients[0]
        created = admin.post(
            "/api/reports", json=report(patient_a, accession_a, "Liver cyst. No malignancy.")
        ).json()
        shared = created["report_id"]
        link_a = created["links"][0]["study_instance_uid"]
        with world.node.core.db.write() as session:  # a second link, to a study of B
            study_b = session.scalar(
                select(Study.id).where(Study.study_instance_uid == world.b.studies[0])
            )
            session.add(
                ReportLink(report_pk=shared, study_pk=study_b, method="accession", confidence=0.7)
            )
        both = {
            link["study_instance_uid"]
            for link in admin.get(f"/api/reports/{shared}").json()["links"]
        }
        assert both == {link_a, world.b.studies[0]}
    for caller, expected in (("a-researcher", link_a), ("b-researcher", world.b.studies[0])):
        with world.client(caller) as client:
            links = client.get(f"/api/reports/{shared}").json()["links"]
            assert [link["study_instance_uid"] for link in links] == [expected]


def test_an_unlinked_report_is_seen_only_by_callers_of_every_project(world: World) -> None:
    with world.client("admin") as admin:
        assert admin.get(f"/api/reports/{world.unlinked_report}").status_code == 200
    with world.client("a-researcher") as client:
        assert client.get(f"/api/reports/{world.unlinked_report}").status_code == 404


def test_the_review_list_holds_only_labels_of_the_callers_studies(world: World) -> None:
    with world.client("admin") as admin:
        everything = admin.get("/api/labels/review?limit=1000").json()["labels"]
    in_b = {label["id"] for label in everything if label["study_instance_uid"] in world.b.studies}
    assert in_b, "B has labels to review (else this test shows nothing)"
    with world.client("a-researcher") as client:
        mine = client.get("/api/labels/review?limit=1000").json()["labels"]
    assert mine and {label["study_instance_uid"] for label in mine} <= set(world.a.studies)
    assert not in_b & {label["id"] for label in mine}
    with world.client("a-researcher") as client:
        for label_id in sorted(in_b):
            answer = client.put(f"/api/labels/{label_id}", json={"reviewer": "Dr. A", "value": 1})
            assert answer.status_code == 404, answer.text
    with world.client("admin") as admin:
        untouched = admin.get("/api/labels/review?limit=1000").json()["labels"]
    assert in_b <= {label["id"] for label in untouched}


def test_a_scoped_uploader_reads_back_nothing_of_another_project(world: World) -> None:
    """A report about B's patient sent by A's uploader links to B's study (reports link
    by their content), but the answer does not name it, and A's callers cannot read it."""
    patient_b, accession_b = world.b.original_patients[0]
    body = report(patient_b, accession_b, "Right lung nodule, suspicious for malignancy.")
    with world.client("a-uploader") as uploader:
        sent = uploader.post("/api/reports", json=body)
    assert sent.status_code == 201, sent.text
    assert sent.json()["links"] == []
    assert not [s for s in world.b.secrets() if s in sent.text]
    with world.client("admin") as admin:
        links = admin.get(f"/api/reports/{sent.json()['report_id']}").json()["links"]
    assert [link["study_instance_uid"] in world.b.studies for link in links] == [True]
    with world.client("a-researcher") as client:
        assert client.get(f"/api/reports/{sent.json()['report_id']}").status_code == 404


def test_cohorts_hold_only_the_callers_studies(world: World) -> None:
    """Preview, freeze and export of a cohort defined by a caller of A hold A's studies
    only, although its filters match B's too."""
    with world.client("admin") as admin:
        everything = admin.post("/api/cohorts/preview", json={}).json()
    with world.client("a-researcher") as client:
        preview = client.post("/api/cohorts/preview", json={}).json()
        assert preview["studies"] == len(world.a.studies) < everything["studies"]
        name = f"a-all-{uuid4().hex[:6]}"
        assert client.post("/api/cohorts", json={"name": name}).status_code == 201
        assert client.get(f"/api/cohorts/{name}/preview").json()["studies"] == len(world.a.studies)
        frozen = client.post(f"/api/cohorts/{name}/freeze").json()
        assert frozen["series"] == len(world.a.series)
        download = client.get(f"/api/cohorts/{name}/export")
    assert download.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    files = archive.namelist()
    assert sum(name.endswith(".dcm") for name in files) == len(world.a.instances)
    content = b"".join(archive.read(name) for name in files)
    assert not [s for s in world.b.secrets() if s.encode() in content]
    assert all(uid.encode() in content for _, _, uid in world.a.instances)


def test_a_cohort_of_another_project_is_invisible_and_its_name_taken(world: World) -> None:
    with world.client("admin") as admin:
        listed = {c["name"] for c in admin.get("/api/cohorts").json()}
        assert {world.a.cohort, world.b.cohort} <= listed
        assert admin.get(f"/api/cohorts/{world.b.cohort}/export").status_code == 200
    with world.client("a-researcher") as client:
        assert world.b.cohort not in json.dumps(client.get("/api/cohorts").json())
        taken = client.post("/api/cohorts", json={"name": world.b.cohort})
        assert taken.status_code == 409 and "taken" in taken.json()["detail"]
        assert client.get(f"/api/cohorts/{world.b.cohort_id}/export").status_code == 404
