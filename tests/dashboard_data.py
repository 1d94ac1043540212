"""A small labelled archive for the dashboard's study and review tests: studies of two
projects (``a`` and ``b``) stored through the ingest pipeline, and reports sent through
the report intake, which links them and derives their labels as in production.

Project rules give a study of calling AE ``MOD_A`` to ``a`` and of ``MOD_B`` to ``b``; one
study of ``a`` comes through STOW-RS (no AE title: its source is the door).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from pydicom.uid import generate_uid
from sqlalchemy import select

from access.credentials import Credentials
from catalog.models import Patient, Study
from config import load_settings
from ingest import Source
from labeling.intake import IncomingReport
from node.app import Core, Node
from tests.dicom_bytes import part10, sample

PASSWORD: Final = "correct horse battery staple"

CONFIG: Final = """
[access]
methods = ["password"]
default_project = "unsorted"

[[access.projects]]
project = "a"
calling_aet = "MOD_A"

[[access.projects]]
project = "b"
calling_aet = "MOD_B"
"""


@dataclass(frozen=True)
class Exam:
    """One study as sent (original identifiers), and its report's text (if any)."""

    patient: str
    sex: str
    age: str
    day: date
    modality: str
    calling_aet: str | None
    project: str
    report: str = ""
    report_type: str = "radiology"
    second_report: str = ""
    """Another radiology report of the same exam (two that disagree: a label to review)."""


EXAMS: Final = (
    Exam("PA-1", "F", "045Y", date(2024, 3, 5), "CT", "MOD_A", "a", "胰头占位，考虑胰腺癌。"),
    Exam(
        "PA-2",
        "M",
        "062Y",
        date(2024, 4, 10),
        "MR",
        "MOD_A",
        "a",
        "Impression: hypoenhancing liver lesion, suspicious for metastasis.",
        second_report="Impression: the liver is unremarkable.",
    ),
    Exam(
        "PA-3",
        "F",
        "038Y",
        date(2024, 3, 20),
        "CT",
        None,
        "a",
        "Findings: liver cyst. No pancreatic mass.",
    ),
    Exam(
        "PA-4",
        "M",
        "071Y",
        date(2024, 5, 2),
        "CT",
        "MOD_A",
        "a",
        "Impression: pancreatic adenocarcinoma.",
        second_report="Impression: normal pancreas, no pancreatic mass.",
    ),
    Exam(
        "PB-1",
        "M",
        "047Y",
        date(2024, 3, 7),
        "CT",
        "MOD_B",
        "b",
        "（胰头）中分化导管腺癌。",
        "pathology",
    ),
    Exam(
        "PB-2",
        "F",
        "055Y",
        date(2024, 6, 1),
        "MR",
        "MOD_B",
        "b",
        "Impression: hepatocellular carcinoma.",
        second_report="Impression: liver cyst, no liver lesion.",
    ),
)
"""PA-3 arrives over STOW-RS with the uploader's project ``a``; the others over DIMSE."""


def accession(exam: Exam) -> str:
    return f"ACC-{exam.patient}"


def load(core: Core) -> None:
    """Store every exam's study (one instance), then its reports."""
    for exam in EXAMS:
        ds = sample("MR_small.dcm" if exam.modality == "MR" else "CT_small.dcm")
        ds.PatientID, ds.PatientName = exam.patient, f"Doe^{exam.patient}"
        ds.PatientSex, ds.PatientAge = exam.sex, exam.age
        ds.AccessionNumber, ds.StudyDate = accession(exam), exam.day.strftime("%Y%m%d")
        ds.StudyDescription = f"{exam.modality} exam"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        if exam.calling_aet:
            source = Source(
                door="dimse",
                remote="test",
                calling_aet=exam.calling_aet,
                projects=(exam.project,),  # as the node's rules say (a core has none)
            )
        else:
            source = Source(door="stow", remote="test", projects=(exam.project,))
        result = core.ingestor.accept(part10(ds), source)
        assert result.outcome.success, result.reason
    for exam in EXAMS:
        for text, kind in ((exam.report, exam.report_type), (exam.second_report, "radiology")):
            if text:
                core.report_intake.accept(
                    IncomingReport(
                        report_type=kind,
                        patient_id=exam.patient,
                        impression=text,
                        accession_number=accession(exam),
                        exam_date=exam.day,
                        modality=exam.modality,
                    ),
                    "rest",
                )


def add_users(node: Node) -> None:
    """``admin`` (everything), ``alice`` (researcher of ``a``), ``bob`` (researcher of
    ``b``), ``reader`` (viewer of every project: no labels, no reports)."""
    credentials = Credentials(node.core.db, node.settings.access)
    credentials.add_user("admin", PASSWORD, ["admin"], None, actor="test")
    credentials.add_user("alice", PASSWORD, ["researcher"], ["a"], actor="test")
    credentials.add_user("bob", PASSWORD, ["researcher"], ["b"], actor="test")
    credentials.add_user("reader", PASSWORD, ["viewer"], None, actor="test")


def stored_patient_ids(core: Core) -> dict[str, str]:
    """Each stored Study Instance UID's (pseudonymised) Patient ID, from the catalog."""
    with core.db.read() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Patient.patient_id).join(
                Patient, Patient.id == Study.patient_pk
            )
        ).all()
    return {uid: patient for uid, patient in rows}


@contextmanager
def labelled_node(folder: Path) -> Iterator[Node]:
    """A running node on loopback (password logins, projects ``a`` and ``b``) holding
    :data:`EXAMS` and their reports, with the users of :func:`add_users`; stopped after."""
    config = folder / "pacsnode.toml"
    config.write_text(CONFIG)
    node = Node(
        load_settings(config, data_dir=folder / "data", fsync=False, dicom_port=0, http_port=0)
    )
    node.start()
    try:
        add_users(node)
        load(node.core)
        yield node
    finally:
        node.stop()
