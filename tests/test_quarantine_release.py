"""Releasing a quarantined instance goes through the pipeline's own index step: listeners run
(a report waiting for the study gets linked), and the release is audited in the core."""

from __future__ import annotations

from datetime import date

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from typer.testing import CliRunner

from catalog.models import AuditEvent, Instance, QuarantinedInstance, ReportLink, Study
from config import DeidSettings, Settings
from ingest import IngestResult, Outcome, ReviewError, Source
from ingest.review import discard
from labeling.intake import IncomingReport
from node.app import Core, build_core
from node.cli import app
from tests.dicom_bytes import part10, sample

SOURCE = Source(door="folder", remote="test")
runner = CliRunner()


@pytest.fixture
def quarantining(settings: Settings) -> Settings:
    return settings.model_copy(update={"deid": DeidSettings(burned_in_policy="quarantine")})


def ultrasound(accession: str) -> bytes:
    """An instance the burned-in policy holds back (modality US), of a new study."""
    ds = sample()
    ds.Modality = "US"
    ds.PatientID = "MRN5521"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return part10(ds)


def waiting_report(core: Core, accession: str) -> int:
    """A report of the held study: nothing in the index to link it to yet."""
    result = core.report_intake.accept(
        IncomingReport(
            report_type="radiology",
            patient_id="MRN5521",
            accession_number=accession,
            impression="Liver: no focal lesion.",
            exam_date=date(2024, 3, 5),
            modality="US",
        ),
        "rest",
    )
    assert not result.links
    return result.report_id


def linked_studies(core: Core, report_id: int) -> list[str]:
    with core.db.read() as session:
        return list(
            session.scalars(
                select(Study.study_instance_uid)
                .join(ReportLink, ReportLink.study_pk == Study.id)
                .where(ReportLink.report_pk == report_id)
            )
        )


def test_release_runs_the_listeners_and_links_the_waiting_report(quarantining: Settings) -> None:
    heard: list[IngestResult] = []
    core = build_core(quarantining, listeners=(heard.append,))
    try:
        held = core.ingestor.accept(ultrasound("ACC-US-1"), SOURCE)
        assert held.outcome is Outcome.STORED and held.quarantined and held.sop_instance_uid
        report_id = waiting_report(core, "ACC-US-1")

        released = core.ingestor.release(held.sop_instance_uid, actor="dr reviewer")

        assert released.outcome is Outcome.STORED
        assert released.source.door == "review"
        assert heard[-1] == released
        assert linked_studies(core, report_id) == [held.study_instance_uid]
        with core.db.read() as session:
            assert session.scalars(select(QuarantinedInstance)).all() == []
            assert session.scalars(select(Instance.source_door)).one() == "review"
            audit = session.execute(select(AuditEvent.actor, AuditEvent.action)).all()
        assert audit == [("dr reviewer", "quarantine_release")]
        with pytest.raises(ReviewError):
            core.ingestor.release(held.sop_instance_uid, actor="dr reviewer")
    finally:
        core.close()


def test_discard_is_audited_by_the_core(quarantining: Settings) -> None:
    core = build_core(quarantining)
    try:
        held = core.ingestor.accept(ultrasound("ACC-US-2"), SOURCE)
        assert held.sop_instance_uid
        discard(core.ingestor.catalog, core.blobs, held.sop_instance_uid, actor="dr reviewer")
        with core.db.read() as session:
            assert session.scalars(select(QuarantinedInstance)).all() == []
            audit = session.execute(select(AuditEvent.actor, AuditEvent.action)).all()
        assert audit == [("dr reviewer", "quarantine_discard")]
        assert [p for p in core.blobs.root.rglob("*") if p.is_file()] == []
    finally:
        core.close()


def test_cli_release_links_the_waiting_report(quarantining: Settings) -> None:
    core = build_core(quarantining)
    try:
        held = core.ingestor.accept(ultrasound("ACC-US-3"), SOURCE)
        assert held.sop_instance_uid
        report_id = waiting_report(core, "ACC-US-3")
    finally:
        core.close()
    where = ["--data-dir", str(quarantining.data_dir)]
    if quarantining.database_url:
        where += ["--database-url", quarantining.database_url]

    result = runner.invoke(app, ["deid", "quarantine", "release", held.sop_instance_uid, *where])
    assert result.exit_code == 0, result.output
    assert f"{held.sop_instance_uid}: released (stored)" in result.stdout
    again = runner.invoke(app, ["deid", "quarantine", "release", held.sop_instance_uid, *where])
    assert again.exit_code == 1
    assert "no quarantined instance" in again.stderr

    core = build_core(quarantining)
    try:
        assert linked_studies(core, report_id) == [held.study_instance_uid]
        with core.db.read() as session:
            actions = session.scalars(select(AuditEvent.action)).all()
        # the arrival and the release are stores too (audit.stores); one review decision
        assert [a for a in actions if a.startswith("quarantine")] == ["quarantine_release"]
    finally:
        core.close()
