"""The report intake on a real catalog (SQLite and PostgreSQL) and the real ingest pipeline:
de-identified storage, duplicates, linking in both arrival orders, study labels, reviews that
survive re-extraction, and a labeling failure that never changes an ingest result."""

from __future__ import annotations

import json
from datetime import date

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, text

from catalog.models import Label, Report, ReportLabel, ReportLink, Study
from deid import Accessor
from ingest import Outcome, Source
from labeling.intake import IncomingReport, ReportRejectedError
from labeling.labels import apply_review
from node.app import Core
from tests.dicom_bytes import part10, sample

SOURCE = Source(door="folder", remote="test")


def image(patient_id: str, accession: str, study_date: str, modality: str = "CT") -> bytes:
    """A small instance of a new study (new UIDs) of ``patient_id``."""
    ds = sample("CT_small.dcm")
    ds.PatientID = patient_id
    ds.PatientName = "Zhang^Wei"
    ds.AccessionNumber = accession
    ds.StudyDate = study_date
    ds.Modality = modality
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return part10(ds)


def store(core: Core, raw: bytes) -> str:
    result = core.ingestor.accept(raw, SOURCE)
    assert result.outcome is Outcome.STORED, result.reason
    assert result.study_instance_uid is not None
    return result.study_instance_uid


def report(
    patient_id: str = "MRN884213",
    accession: str = "",
    exam: date | None = date(2024, 3, 5),
    kind: str = "radiology",
    impression: str = "诊断意见：胰头占位，考虑胰腺癌。",
    modality: str = "CT",
) -> IncomingReport:
    return IncomingReport(
        report_type=kind,
        patient_id=patient_id,
        findings="检查所见：患者张伟，2024年3月5日CT：胰头区见一约3.2cm低密度肿块。电话13912345678。",
        impression=impression,
        accession_number=accession,
        patient_names=("Zhang^Wei", "张伟"),
        birth_date=date(1961, 7, 4),
        exam_date=exam,
        modality=modality,
    )


def study_labels(core: Core, study_uid: str) -> dict[str, int]:
    with core.db.read() as session:
        rows = session.execute(
            select(Label.task, Label.value, Label.override_value)
            .join(Study, Study.id == Label.study_pk)
            .where(Study.study_instance_uid == study_uid)
        ).all()
    return {task: override if override is not None else value for task, value, override in rows}


def links(core: Core, report_id: int) -> list[tuple[str, str]]:
    with core.db.read() as session:
        return [
            (uid, method)
            for uid, method in session.execute(
                select(Study.study_instance_uid, ReportLink.method)
                .join(ReportLink, ReportLink.study_pk == Study.id)
                .where(ReportLink.report_pk == report_id)
            )
        ]


# ------------------------------------------------------------------ storage


def test_a_report_is_stored_de_identified(core: Core) -> None:
    result = core.report_intake.accept(report(accession="CT2024031500123"), "rest")
    assert not result.duplicate
    assert result.labels["pancreatic_cancer"] == 2
    with core.db.read() as session:
        stored = session.get(Report, result.report_id)
        assert stored is not None
        row = " ".join(
            str(v)
            for v in (
                stored.patient_id,
                stored.accession_number,
                stored.exam_date,
                stored.findings,
                stored.impression,
            )
        )
        label = session.scalars(
            select(ReportLabel).where(
                ReportLabel.report_pk == stored.id, ReportLabel.task == "pancreatic_cancer"
            )
        ).one()
        assert stored.text[label.span_start : label.span_end] == label.span_text
        assert label.span_text in ("胰腺癌", "胰头占位")
    for original in (
        "MRN884213",
        "CT2024031500123",
        "张伟",
        "13912345678",
        "2024年3月5日",
        "20240305",
    ):
        assert original not in row
    pseudonyms = core.pseudonymizer
    assert stored.patient_id == pseudonyms.patient_id("MRN884213")
    assert stored.accession_number == pseudonyms.accession_number("CT2024031500123")
    assert stored.exam_date == pseudonyms.shift_date("20240305", "MRN884213")
    shifted = date.fromisoformat(
        f"{stored.exam_date[:4]}-{stored.exam_date[4:6]}-{stored.exam_date[6:]}"
    )
    assert f"{shifted.year}年{shifted.month}月{shifted.day}日" in stored.findings
    # the originals are only in the encrypted vault, for the admin's re-identification
    originals = core.vault.reidentify(
        "patient", stored.patient_id, actor=Accessor("test", "checking the intake")
    )
    assert originals is not None and originals["patient_id"] == "MRN884213"
    assert originals["patient_name"] == "Zhang^Wei"


def test_the_same_report_twice_is_stored_once(core: Core) -> None:
    first = core.report_intake.accept(report(accession="A1"), "hl7")
    second = core.report_intake.accept(report(accession="A1"), "file")
    assert second.duplicate and second.report_id == first.report_id
    with core.db.read() as session:
        assert len(session.scalars(select(Report.id)).all()) == 1


@pytest.mark.parametrize(
    ("incoming", "reason"),
    [
        (IncomingReport(report_type="radiology", patient_id="P1"), "empty report"),
        (
            IncomingReport(report_type="cardiology", patient_id="P1", impression="x"),
            "radiology or pathology",
        ),
        (IncomingReport(report_type="radiology", patient_id=" ", impression="x"), "no patient ID"),
    ],
)
def test_bad_reports_are_refused_and_nothing_is_stored(
    core: Core, incoming: IncomingReport, reason: str
) -> None:
    with pytest.raises(ReportRejectedError, match=reason):
        core.report_intake.accept(incoming, "rest")
    with core.db.read() as session:
        assert session.scalars(select(Report.id)).all() == []


# ------------------------------------------------------------------ linking, both orders


def test_report_first_then_images_links_by_accession(core: Core) -> None:
    result = core.report_intake.accept(report(accession="ACC-1"), "hl7")
    assert result.links == ()
    study = store(core, image("MRN884213", "ACC-1", "20240305"))
    assert links(core, result.report_id) == [(study, "accession")]
    assert study_labels(core, study)["pancreatic_cancer"] == 2
    assert study_labels(core, study)["breast_cancer"] == -1


def test_images_first_then_report_links_by_accession(core: Core) -> None:
    study = store(core, image("MRN884213", "ACC-2", "20240305"))
    assert study_labels(core, study) == {}
    result = core.report_intake.accept(report(accession="ACC-2"), "rest")
    assert [(uid, method) for uid, method, _ in result.links] == [(study, "accession")]
    assert study_labels(core, study)["pancreatic_cancer"] == 2


def test_without_accession_links_by_patient_date_and_modality(core: Core) -> None:
    ct = store(core, image("P-7", "", "20240305", "CT"))
    store(core, image("P-7", "", "20240305", "MR"))
    store(core, image("P-7", "", "20240320", "CT"))  # outside the 3-day window
    store(core, image("OTHER", "", "20240305", "CT"))  # another patient
    result = core.report_intake.accept(report("P-7", exam=date(2024, 3, 6)), "file")
    assert links(core, result.report_id) == [(ct, "patient_date")]
    far = core.report_intake.accept(
        report("P-7", exam=date(2024, 5, 1), impression="Impression: liver cyst."), "file"
    )
    assert links(core, far.report_id) == []


def test_pathology_links_to_the_nearest_prior_study_in_both_orders(core: Core) -> None:
    older = store(core, image("P-9", "", "20240110"))
    pathology = core.report_intake.accept(
        report(
            "P-9",
            exam=date(2024, 3, 1),
            kind="pathology",
            impression="病理诊断：（胰头）导管腺癌。",
        ),
        "hl7",
    )
    assert links(core, pathology.report_id) == [(older, "pathology_prior")]
    assert study_labels(core, older)["pancreatic_cancer"] == 1
    nearer = store(core, image("P-9", "", "20240220"))  # arrives later, nearer the specimen
    assert links(core, pathology.report_id) == [(nearer, "pathology_prior")]
    assert study_labels(core, nearer)["pancreatic_cancer"] == 1
    assert study_labels(core, older) == {}
    store(core, image("P-9", "", "20240305"))  # after the specimen: never its source
    assert links(core, pathology.report_id) == [(nearer, "pathology_prior")]


def test_the_accession_study_replaces_a_date_guess(core: Core) -> None:
    guess = store(core, image("P-5", "", "20240305"))
    result = core.report_intake.accept(report("P-5", accession="ACC-5"), "rest")
    assert links(core, result.report_id) == [(guess, "patient_date")]
    right = store(core, image("P-5", "ACC-5", "20240306"))
    assert links(core, result.report_id) == [(right, "accession")]
    assert study_labels(core, guess) == {}


def test_pathology_wins_over_radiology_and_disagreement_goes_to_review(core: Core) -> None:
    study = store(core, image("P-3", "ACC-3", "20240305"))
    core.report_intake.accept(report("P-3", accession="ACC-3"), "hl7")  # radiology: 2
    assert study_labels(core, study)["pancreatic_cancer"] == 2
    core.report_intake.accept(
        report(
            "P-3",
            accession="ACC-3",
            kind="pathology",
            impression="病理诊断：（胰头）慢性胰腺炎，未见肿瘤。",
        ),
        "hl7",
    )
    assert study_labels(core, study)["pancreatic_cancer"] == 0
    core.report_intake.accept(
        report("P-3", accession="ACC-3", kind="pathology", impression="病理诊断：胰头导管腺癌。"),
        "hl7",
    )
    with core.db.read() as session:
        label = session.scalars(select(Label).where(Label.task == "pancreatic_cancer")).one()
        assert label.value == 1
        assert label.needs_review
        assert "disagree" in (label.review_reason or "")


def test_a_review_survives_re_extraction(core: Core) -> None:
    study = store(core, image("P-4", "ACC-4", "20240305"))
    core.report_intake.accept(report("P-4", accession="ACC-4"), "hl7")
    with core.db.write() as session:
        label = session.scalars(select(Label).where(Label.task == "pancreatic_cancer")).one()
        apply_review(label, reviewer="Dr. Wang", value=1, note="EUS biopsy elsewhere")
    assert sum(core.report_intake.reextract()) == 1
    assert study_labels(core, study)["pancreatic_cancer"] == 1
    with core.db.read() as session:
        label = session.scalars(select(Label).where(Label.task == "pancreatic_cancer")).one()
        assert (label.value, label.override_value, label.review_status) == (2, 1, "overridden")
        assert label.reviewed_by == "Dr. Wang" and label.reviewed_at is not None
        assert not label.needs_review


def test_a_labeling_failure_never_changes_the_ingest_result(core: Core) -> None:
    core.report_intake.accept(report("P-6", accession="ACC-6"), "hl7")
    with core.db.write() as session:
        session.execute(text("DROP TABLE report_link"))
    study = store(core, image("P-6", "ACC-6", "20240305"))  # the listener fails, logged
    with core.db.read() as session:
        assert session.scalar(select(Study.id).where(Study.study_instance_uid == study))


# ------------------------------------------------------------------ CLI: review, reextract


def _cli(settings_args: list[str], *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from node.cli import app

    result = CliRunner().invoke(app, [*args, *settings_args])
    # stderr also names the archive used: the answer is stdout, an error is stderr
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr


def test_cli_review_lists_confirms_and_overrides(core: Core) -> None:
    args = ["--data-dir", str(core.settings.data_dir), "--database-url", core.settings.catalog_url]
    store(core, image("P-10", "ACC-10", "20240305"))
    core.report_intake.accept(report("P-10", accession="ACC-10"), "hl7")
    core.report_intake.accept(
        report("P-10", accession="ACC-10", kind="pathology", impression="病理诊断：胰头导管腺癌。"),
        "hl7",
    )
    core.report_intake.accept(
        report("P-10", accession="ACC-10", kind="pathology", impression="病理诊断：慢性胰腺炎。"),
        "hl7",
    )
    code, output = _cli(args, "labels", "review", "--json")
    assert code == 0, output
    [queued] = json.loads(output)["labels"]
    assert queued["task"] == "pancreatic_cancer" and "disagree" in queued["reason"]

    code, output = _cli(args, "labels", "review", str(queued["id"]), "--confirm")
    assert code == 1 and "Error: --by NAME is required" in output
    code, output = _cli(args, "labels", "review", str(queued["id"]), "--confirm", "--set", "1")
    assert code == 1 and "either --confirm or --set" in output
    code, output = _cli(args, "labels", "review", "999999", "--set", "1", "--by", "x")
    assert code == 1 and "no label 999999" in output
    code, output = _cli(args, "labels", "review", str(queued["id"]), "--set", "7", "--by", "x")
    assert code == 1 and "class must be one of" in output

    code, output = _cli(
        args, "labels", "review", str(queued["id"]), "--set", "0", "--by", "Dr. Li", "--note", "x"
    )
    assert code == 0, output
    assert "overridden, class 0, by Dr. Li" in output
    code, output = _cli(args, "labels", "review", "--json")
    assert json.loads(output)["labels"] == []

    code, output = _cli(args, "labels", "reextract")
    assert code == 0, output
    assert "3 reports re-extracted" in output
    with core.db.read() as session:
        label = session.scalars(select(Label).where(Label.task == "pancreatic_cancer")).one()
        assert (label.value, label.effective_value, label.reviewed_by) == (1, 0, "Dr. Li")
