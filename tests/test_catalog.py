"""The index writer on SQLite and PostgreSQL: hierarchy, counts, versions, concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from catalog import (
    CatalogWriter,
    Database,
    IndexOutcome,
    catalog_stats,
    extract,
    to_dicom_json,
)
from catalog.models import Change, Instance, Patient, Series, Study


@dataclass(frozen=True)
class Blob:
    key: str
    sha256: str
    size: int


def dataset(
    study: str, series: str, sop: str, *, patient: str = "P1", modality: str = "CT"
) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.Modality = modality
    ds.StudyDate = "2024.03.05"  # ACR-NEMA style, normalised by the catalog
    return ds


def record(ds: Dataset):  # type: ignore[no-untyped-def]
    return extract(
        ds, to_dicom_json(ds, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    )


def blob(n: int, size: int = 100) -> Blob:
    return Blob(key=f"{n:032x}", sha256=f"{n:064x}", size=size)


@pytest.fixture
def db(catalog_url: str):  # type: ignore[no-untyped-def]
    database = Database(catalog_url)
    database.migrate()
    database.migrate()  # a second upgrade is a no-op
    yield database
    database.dispose()


def test_first_instance_creates_the_hierarchy(db: Database) -> None:
    writer = CatalogWriter(db)
    result = writer.index(
        record(dataset("1.1", "1.1.1", "1.1.1.1")), blob(1), door="dimse", aet="CT"
    )
    assert result.outcome is IndexOutcome.NEW
    with db.read() as session:
        study = session.scalars(select(Study)).one()
        assert (study.study_date, study.modalities_in_study) == ("20240305", "CT")
        assert (study.number_of_series, study.number_of_instances, study.total_bytes) == (1, 1, 100)
        patient = session.scalars(select(Patient)).one()
        assert patient.patient_id == "P1"
        assert patient.patient_name_ci == str(dataset("1", "1", "1").PatientName).casefold()
        instance = session.scalars(select(Instance)).one()
        assert instance.source_aet == "CT"
        assert (
            '"BulkDataURI":"/studies/1.1/series/1.1.1/instances/1.1.1.1/bulkdata/7FE00010"'
            in instance.metadata_json
        )
        kinds = session.scalars(select(Change.change_type).order_by(Change.seq)).all()
        assert kinds == ["new_patient", "new_study", "new_series", "new_instance"]


def test_counts_and_modalities_follow_new_series(db: Database) -> None:
    writer = CatalogWriter(db)
    writer.index(record(dataset("1.1", "1.1.1", "1.1.1.1")), blob(1), door="dimse", aet=None)
    writer.index(record(dataset("1.1", "1.1.1", "1.1.1.2")), blob(2), door="dimse", aet=None)
    writer.index(
        record(dataset("1.1", "1.1.2", "1.1.2.1", modality="MR")), blob(3), door="dimse", aet=None
    )
    writer.index(record(dataset("1.2", "1.2.1", "1.2.1.1")), blob(4), door="dimse", aet=None)
    with db.read() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == "1.1")).one()
        assert study.modalities_in_study == "CT\\MR"
        assert (study.number_of_series, study.number_of_instances) == (2, 3)
        assert session.scalar(select(func.count()).select_from(Patient)) == 1
    figures = catalog_stats(db)
    assert (figures.patients, figures.studies, figures.series) == (1, 2, 3)
    assert catalog_stats(db).instances == 4
    assert catalog_stats(db).bytes == 400


def test_same_bytes_again_is_same_and_different_bytes_replace(db: Database) -> None:
    writer = CatalogWriter(db)
    rec = record(dataset("1.1", "1.1.1", "1.1.1.1"))
    writer.index(rec, blob(1), door="dimse", aet=None)
    same = writer.index(rec, Blob("f" * 32, blob(1).sha256, 100), door="dimse", aet=None)
    assert same.outcome is IndexOutcome.SAME
    assert same.obsolete_blob_key == "f" * 32  # the caller's redundant copy
    replaced = writer.index(rec, blob(2, size=150), door="stow", aet=None)
    assert (replaced.outcome, replaced.version, replaced.obsolete_blob_key) == (
        IndexOutcome.REPLACED,
        2,
        blob(1).key,
    )
    assert writer.find("1.1.1.1").sha256 == blob(2).sha256  # type: ignore[union-attr]
    stats = catalog_stats(db)
    assert (stats.instances, stats.bytes) == (1, 150)


def test_concurrent_writers_lose_no_count(db: Database) -> None:
    """Eight threads index one study's instances at once (new series racing each other)."""
    writer = CatalogWriter(db)

    def index(n: int) -> IndexOutcome:
        ds = dataset("9.9", f"9.9.{n % 4}", f"9.9.{n % 4}.{n}")
        return writer.index(record(ds), blob(n), door="dimse", aet=None).outcome

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(index, range(40)))
    assert outcomes == [IndexOutcome.NEW] * 40
    with db.read() as session:
        study = session.scalars(select(Study)).one()
        assert (study.number_of_series, study.number_of_instances) == (4, 40)
        assert session.scalar(select(func.count()).select_from(Series)) == 4
        per_series = session.scalars(select(Series.number_of_instances)).all()
        assert sorted(per_series) == [10, 10, 10, 10]


def test_same_study_uid_under_another_patient_joins_the_existing_study(db: Database) -> None:
    writer = CatalogWriter(db)
    writer.index(
        record(dataset("1.1", "1.1.1", "1.1.1.1", patient="A")), blob(1), door="dimse", aet=None
    )
    writer.index(
        record(dataset("1.1", "1.1.2", "1.1.2.1", patient="B")), blob(2), door="dimse", aet=None
    )
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 1
        study = session.scalars(select(Study)).one()
        assert study.number_of_instances == 2


def test_the_migrations_build_exactly_the_models(catalog_url: str) -> None:
    """A model changed without its migration (or the reverse) would make catalogs created by
    migrating differ from what the code expects."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from catalog.models import Base

    def modelled(item: object, name: str | None, kind: str, *_: object) -> bool:
        # PostgreSQL's trigram indexes (infix matching) exist in the migrations only
        return not (kind == "index" and (name or "").endswith("_trgm"))

    database = Database(catalog_url)
    database.migrate()
    with database.write_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": modelled})
        differences = compare_metadata(context, Base.metadata)
    database.dispose()
    assert differences == []
