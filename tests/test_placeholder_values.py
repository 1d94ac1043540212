"""Placeholder values in real headers: an accession number that several exams share never
links a report, and a Patient's Sex that is not a sex never reaches a cohort.

pydicom's ``dicomdirtests`` hold four studies of two patients (98890234: an MR and a CT;
77654033: a CR and a CT) that all carry Accession Number ``2``: a report with accession
``2`` once linked to all four.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pydicom.data
import pytest
from sqlalchemy import select, update

from catalog import normalize
from catalog.models import Patient, Report, ReportLink, Study
from export import Cohorts, Exporter
from ingest import Source
from labeling import IncomingReport
from labeling.linking import accession_key
from node.app import Core, build_label_source
from tests.dicom_bytes import part10, sample

DICOMDIR_TESTS = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
SOURCE = Source(door="folder", remote="test")


@pytest.fixture
def archive(core: Core) -> Core:
    """The three studies folders whose instances carry accession number 2."""
    for folder in ("98892001", "98892003", "77654033"):
        for path in sorted((DICOMDIR_TESTS / folder).rglob("*")):
            if path.is_file():
                result = core.ingestor.accept(path.read_bytes(), SOURCE)
                assert result.outcome.success, (path.name, result.reason)
    return core


def studies_of(core: Core, report_id: int) -> list[tuple[str, str]]:
    """(study date, link method) of every study ``report_id`` links to."""
    with core.db.read() as session:
        rows = session.execute(
            select(Study.study_date, ReportLink.method)
            .join(ReportLink, ReportLink.study_pk == Study.id)
            .where(ReportLink.report_pk == report_id)
        ).all()
    return sorted((str(day), method) for day, method in rows)


def report(patient_id: str, accession: str, exam: date, modality: str) -> IncomingReport:
    return IncomingReport(
        report_type="radiology",
        patient_id=patient_id,
        findings="CT of the abdomen: no focal lesion.",
        impression="No evidence of malignancy.",
        accession_number=accession,
        exam_date=exam,
        modality=modality,
    )


def test_a_shared_placeholder_accession_links_nothing_by_accession(archive: Core) -> None:
    with archive.db.read() as session:
        keys = session.scalars(select(Study.accession_number)).all()
    assert len(keys) == 6 and len(set(keys)) == 3  # four studies share the pseudonym of "2"

    result = archive.report_intake.accept(report("77654033", "2", date(1995, 9, 3), "CT"), "rest")
    linked = studies_of(archive, result.report_id)
    assert len(linked) == 1, linked  # its own CT, found by patient and date, not the other 3
    assert linked[0][1] == "patient_date"
    with archive.db.read() as session:
        stored = session.get(Report, result.report_id)
        assert stored is not None and stored.accession_number is None


def test_a_real_accession_still_links(archive: Core) -> None:
    result = archive.report_intake.accept(report("98890234", "134", date(2003, 5, 5), "MR"), "hl7")
    assert [method for _, method in studies_of(archive, result.report_id)] == ["accession"]


def test_a_study_keyed_by_a_placeholder_is_no_key_for_reports_stored_before(
    archive: Core,
) -> None:
    """A report stored with the pseudonym of "2" (as before placeholders were dropped) must
    not link to the other patient's studies when they arrive or are relinked."""
    first = archive.report_intake.accept(report("77654033", "", date(1995, 9, 3), "CT"), "file")
    legacy = archive.pseudonymizer.accession_number(
        "2", archive.settings.labeling.issuer_of_accession_number
    )
    pseudo_patient = archive.pseudonymizer.patient_id("77654033")
    with archive.db.write() as session:
        session.execute(
            update(Report).where(Report.id == first.report_id).values(accession_number=legacy)
        )
        other = session.scalars(
            select(Study.study_instance_uid)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Patient.patient_id != pseudo_patient)
        ).all()
    assert len(other) == 4
    for uid in other:
        archive.report_intake.study_arrived(uid)
    linked = studies_of(archive, first.report_id)
    assert [method for _, method in linked] == ["patient_date"], linked


@pytest.mark.parametrize("value", ["0", "000", "N/A", "UNKNOWN", "1", "2", " ", "", "NONE", "-"])
def test_placeholder_accessions_are_no_linking_key(value: str) -> None:
    assert accession_key(value) == ""


@pytest.mark.parametrize("value", ["03086212", "134", "428", "8000000000330109", "A-12"])
def test_real_accessions_are_linking_keys(value: str) -> None:
    assert accession_key(f" {value} ") == value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("M", "M"), ("f", "F"), ("O", "O"), ("Male", "M"), ("FEMALE", "F"), ("0000", None),
     ("U", None), ("", None), (None, None)],
)  # fmt: skip
def test_sex_codes(raw: str | None, expected: str | None) -> None:
    assert normalize.sex(raw) == expected


def test_a_sex_that_is_not_one_never_reaches_a_preview_or_a_manifest(
    core: Core, tmp_path: Path
) -> None:
    for name, sex in (("CT_small.dcm", "0000"), ("MR_small.dcm", "Male")):
        ds = sample(name)
        ds.PatientSex = sex
        assert core.ingestor.accept(part10(ds), SOURCE).outcome.success
    with core.db.read() as session:
        assert sorted(map(str, session.scalars(select(Patient.patient_sex)).all())) == [
            "M",
            "None",
        ]
    cohorts = Cohorts(core.db, core.settings.export, build_label_source(core.report_intake.tasks))
    cohorts.define("all", {}, actor="t")
    assert cohorts.preview("all")["sex"] == {"M": 1, "unknown": 1}
    cohorts.freeze("all", actor="t")
    Exporter(core.db, core.blobs, cohorts, core.settings.export).to_folder(
        "all", "dicom", tmp_path / "out", actor="t"
    )
    manifest = (tmp_path / "out" / "manifest_series.csv").read_text()
    assert sorted(row["sex"] for row in csv.DictReader(io.StringIO(manifest))) == ["", "M"]
