"""ingest.accept: every outcome, and nothing half-written on any failure."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from catalog import CatalogWriter, Database, catalog_stats
from catalog.models import Instance
from config import Settings
from deid import PassThroughDeidentifier
from ingest import Expected, Ingestor, IngestResult, Outcome, Source
from node.app import Core
from storage import FilesystemBlobStore
from tests.dicom_bytes import nested_sequences, part10, sample

SOURCE = Source(door="folder", remote="test")


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_stored_bytes_are_the_bytes_received_when_deid_is_off(plain_core: Core) -> None:
    raw = part10(sample())
    result = plain_core.ingestor.accept(raw, SOURCE)
    assert result.outcome is Outcome.STORED
    assert result.sop_instance_uid == sample().SOPInstanceUID
    [stored] = blob_files(plain_core.blobs.root)
    assert stored.read_bytes() == raw
    assert catalog_stats(plain_core.db).instances == 1
    with plain_core.db.read() as session:
        assert session.scalars(select(Instance.deid_method)).one() is None


def test_stored_instance_is_deidentified_with_its_pixels_and_syntax_untouched(core: Core) -> None:
    original = sample()
    result = core.ingestor.accept(part10(original), SOURCE)
    assert result.outcome is Outcome.STORED
    expected_uid = core.pseudonymizer.uid(original.SOPInstanceUID)
    assert result.sop_instance_uid == expected_uid
    assert result.study_instance_uid == core.pseudonymizer.uid(original.StudyInstanceUID)
    [stored_file] = blob_files(core.blobs.root)
    stored = dcmread(stored_file)
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert stored.file_meta.MediaStorageSOPInstanceUID == expected_uid
    assert stored.PixelData == original.PixelData
    assert stored.PatientID == core.pseudonymizer.patient_id(original.PatientID)
    assert stored.PatientIdentityRemoved == "YES"
    assert str(original.PatientName) not in stored_file.read_bytes().decode("latin-1")
    with core.db.read() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.sop_instance_uid == expected_uid
        assert instance.deid_method is not None
        assert instance.deid_method.startswith("pacsnode-deid-1:113100")


def test_same_instance_twice_is_a_duplicate_without_a_copy(core: Core) -> None:
    raw = part10(sample())
    core.ingestor.accept(raw, SOURCE)
    again = core.ingestor.accept(raw, SOURCE)
    assert again.outcome is Outcome.DUPLICATE
    assert again.outcome.success
    assert len(blob_files(core.blobs.root)) == 1


def test_different_bytes_under_the_same_uid_replace_the_old_version(plain_core: Core) -> None:
    core = plain_core
    first = sample()
    core.ingestor.accept(part10(first), SOURCE)
    newer = sample()
    newer.SeriesDescription = "corrected"
    result = core.ingestor.accept(part10(newer), SOURCE)
    assert result.outcome is Outcome.REPLACED
    [stored] = blob_files(core.blobs.root)
    assert stored.read_bytes() == part10(newer)
    with core.db.read() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.version == 2
        assert "corrected" in instance.metadata_json


def reject_cases() -> list[tuple[str, bytes, Expected | None, Outcome, str]]:
    no_sop = sample()
    del no_sop.SOPInstanceUID
    bad_uid = sample()
    bad_uid.StudyInstanceUID = "1.2.abc"
    raw = part10(sample())
    meta_end = 132 + 12 + sample().file_meta.FileMetaInformationGroupLength
    return [
        # Bytes after a file meta that pydicom would read as millions of elements (seconds
        # of CPU under the GIL for a few MB): refused at the first few.
        (
            "zeros after a file meta",
            raw[:meta_end] + bytes(2_000_000),
            None,
            Outcome.REJECTED_INVALID,
            "command elements where the data set is",
        ),
        (
            "one element repeated after a file meta",
            raw[:meta_end] + b"\x08\x00\x08\x00UI\x00\x00" * 250_000,
            None,
            Outcome.REJECTED_INVALID,
            "element tags out of order",
        ),
        (
            "garbage",
            b"this is not DICOM at all" * 10,
            None,
            Outcome.REJECTED_INVALID,
            "not a DICOM",
        ),
        ("empty", b"", None, Outcome.REJECTED_INVALID, "not a DICOM"),
        (
            "no SOP Instance UID",
            part10(no_sop),
            None,
            Outcome.REJECTED_INVALID,
            "SOPInstanceUID is missing",
        ),
        (
            "invalid UID",
            part10(bad_uid),
            None,
            Outcome.REJECTED_INVALID,
            "StudyInstanceUID is not a valid UID",
        ),
        ("truncated", raw[: len(raw) // 3], None, Outcome.REJECTED_INVALID, "malformed"),
        ("deep nesting", nested_sequences(5000), None, Outcome.REJECTED_INVALID, "nested"),
        (
            "other SOP class than requested",
            raw,
            Expected("1.2.840.10008.5.1.4.1.1.4", None),
            Outcome.REJECTED_MISMATCH,
            "SOP Class UID differs",
        ),
    ]


@pytest.mark.parametrize(
    ("raw", "expected", "outcome", "reason"),
    [case[1:] for case in reject_cases()],
    ids=[case[0] for case in reject_cases()],
)
def test_bad_input_is_rejected_with_a_reason_and_nothing_is_stored(
    core: Core, raw: bytes, expected: Expected | None, outcome: Outcome, reason: str
) -> None:
    kept = core.ingestor.accept(part10(sample("MR_small.dcm")), SOURCE)
    result = core.ingestor.accept(raw, SOURCE, expected)
    assert result.outcome is outcome
    assert reason in result.reason
    assert blob_files(core.blobs.root) == [core.blobs.path_of(_only_key(core))]
    assert catalog_stats(core.db).instances == 1
    assert kept.outcome is Outcome.STORED


def _only_key(core: Core) -> str:
    with core.db.read() as session:
        return session.scalars(select(Instance.blob_key)).one()


def test_full_disk_fails_with_storage_outcome_and_indexes_nothing(
    settings: Settings,
    tiny_filesystem: Path,
) -> None:
    db = Database(settings.catalog_url)
    db.migrate()
    blobs = FilesystemBlobStore(tiny_filesystem)
    ingestor = Ingestor(deid=PassThroughDeidentifier(), blobs=blobs, catalog=CatalogWriter(db))
    big = sample()
    big.PixelData = b"\0" * (512 * 1024)
    big.Rows, big.Columns = 512, 512
    result = ingestor.accept(part10(big), SOURCE)
    assert result.outcome is Outcome.FAILED_STORAGE
    assert "No space left" in result.reason
    assert catalog_stats(db).instances == 0
    assert blob_files(tiny_filesystem) == []
    assert ingestor.accept(part10(sample()), SOURCE).outcome is Outcome.STORED
    db.dispose()


def test_locked_catalog_fails_with_index_outcome_and_removes_the_blob(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    db = Database(f"sqlite:///{path}", busy_timeout=0.2)
    db.migrate()
    blobs = FilesystemBlobStore(tmp_path / "blobs", fsync=False)
    ingestor = Ingestor(deid=PassThroughDeidentifier(), blobs=blobs, catalog=CatalogWriter(db))
    other_writer = sqlite3.connect(path, isolation_level=None)
    other_writer.execute("BEGIN EXCLUSIVE")
    try:
        result = ingestor.accept(part10(sample()), SOURCE)
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()
    assert result.outcome is Outcome.FAILED_INDEX
    assert "catalog unavailable" in result.reason
    assert blob_files(blobs.root) == []
    assert ingestor.accept(part10(sample()), SOURCE).outcome is Outcome.STORED
    db.dispose()


def test_a_failing_listener_does_not_change_the_result(core: Core) -> None:
    seen: list[IngestResult] = []

    def broken(result: IngestResult) -> None:
        raise RuntimeError("listener bug")

    ingestor = Ingestor(
        deid=core.deid,
        blobs=core.blobs,
        catalog=core.ingestor.catalog,
        listeners=(broken, seen.append),
    )
    result = ingestor.accept(part10(sample()), SOURCE)
    assert result.outcome is Outcome.STORED
    assert seen == [result]
    assert result.seconds > 0


def test_dicomdir_is_not_an_instance(core: Core) -> None:
    raw = Path(
        __import__("pydicom.data", fromlist=["x"]).get_testdata_file("DICOMDIR")
    ).read_bytes()
    result = core.ingestor.accept(raw, SOURCE)
    assert result.outcome is Outcome.REJECTED_INVALID
    assert "DICOMDIR" in result.reason


@pytest.mark.postgres
def test_postgres_down_fails_with_index_outcome_and_recovers(
    postgres_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    """The catalog server refuses connections mid-operation: nothing stored, then recovery."""
    db = Database(postgres_url)
    db.migrate()
    blobs = FilesystemBlobStore(tmp_path / "blobs", fsync=False)
    ingestor = Ingestor(deid=PassThroughDeidentifier(), blobs=blobs, catalog=CatalogWriter(db))
    assert ingestor.accept(part10(sample("MR_small.dcm")), SOURCE).outcome is Outcome.STORED
    name = make_url(postgres_url).database
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
    try:
        result = ingestor.accept(part10(sample()), SOURCE)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert result.outcome is Outcome.FAILED_INDEX
    assert "catalog unavailable" in result.reason
    assert len(blob_files(blobs.root)) == 1
    assert ingestor.accept(part10(sample()), SOURCE).outcome is Outcome.STORED
    assert catalog_stats(db).instances == 2
    db.dispose()
