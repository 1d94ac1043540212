"""The bench's bulk-loaded catalog holds the rows the node's writer makes for the same
instances, and answers QIDO the same (bench/catalog_gen.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bench.catalog_gen import (
    CALLING_AET,
    DOOR,
    Generator,
    Shape,
    blob_key,
    fill,
    instance_dataset,
    make_generator,
    plan_studies,
    series_dataset,
    sop_uid,
)
from catalog import CatalogWriter, Database, extract, to_dicom_json
from catalog.query import QueryLevel, parse_query, run_query
from config import load_settings
from ingest.identity import content_sha256
from node.app import build_core
from storage import BlobRef

SHAPE = Shape(studies=4, series_per_study=2, instances_per_series=3, studies_per_patient=2)
"""24 instances: two patients with a CT and an MR study each."""
TIMES = {"created_at", "updated_at", "received_at"}
TABLES = {
    "patient": "id",
    "study": "id",
    "study_patient": "study_pk, patient_pk",
    "study_project": "study_pk, project",
    "series": "id",
    "instance": "id",
    "change": "seq",
}


def _index_through_writer(generator: Generator, db: Database) -> None:
    """What the node's index stage writes for each instance the generator stands for."""
    writer = CatalogWriter(db)
    projects, new_study_projects = generator.projects
    for plan in plan_studies(SHAPE, generator.pseudonyms):
        for series in range(SHAPE.series_per_study):
            template, _ = generator.record(plan, series)
            series_ds = series_dataset(template, plan, series)
            for number in range(1, SHAPE.instances_per_series + 1):
                uid = sop_uid(plan, series, number)
                ds = instance_dataset(series_ds, uid, number)
                metadata = to_dicom_json(ds, plan.study_uid, plan.series_uids[series], uid)
                record = extract(ds, metadata)
                record = replace(
                    record,
                    instance=replace(
                        record.instance,
                        deid_method=template.deid_method,
                        deid_flag=template.deid_flag,
                    ),
                    projects=projects,
                    new_study_projects=new_study_projects,
                )
                blob = BlobRef(
                    blob_key(uid), hashlib.sha256(uid.encode()).hexdigest(), template.size
                )
                writer.index(
                    record,
                    blob,
                    door=DOOR,
                    aet=CALLING_AET,
                    content_sha256=content_sha256(ds, metadata),
                )


def _rows(url: str) -> dict[str, list[dict[str, Any]]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        tables = {
            name: [
                {k: v for k, v in row._mapping.items() if k not in TIMES}
                for row in connection.execute(text(f'SELECT * FROM "{name}" ORDER BY {order}'))
            ]
            for name, order in TABLES.items()
        }
    engine.dispose()
    return tables


@dataclass(frozen=True)
class Catalogs:
    generator: Generator
    generated: Database
    generated_url: str
    written: Database
    written_url: str


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogs]:
    """The generator's bulk load, and the node's writer fed the same instances."""
    root = tmp_path_factory.mktemp("catalog-gen")
    generated = load_settings(data_dir=root / "generated", fsync=False)
    generator = make_generator(generated, SHAPE)
    fill(generated.catalog_url, generator)
    written = load_settings(data_dir=root / "written", fsync=False)
    build_core(written).close()  # the migrated, empty catalog
    written_db = Database(written.catalog_url)
    _index_through_writer(generator, written_db)
    generated_db = Database(generated.catalog_url)
    yield Catalogs(generator, generated_db, generated.catalog_url, written_db, written.catalog_url)
    generated_db.dispose()
    written_db.dispose()


def test_generated_rows_are_the_writers(catalogs: Catalogs) -> None:
    expected = _rows(catalogs.written_url)
    actual = _rows(catalogs.generated_url)
    assert len(actual["instance"]) == SHAPE.instances == 24
    assert len(actual["patient"]) == 2
    for table in TABLES:
        assert actual[table] == expected[table], table


@pytest.mark.postgres
def test_postgresql_load_holds_the_same_rows(
    catalogs: Catalogs, postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL the big tables go in through COPY."""
    build_core(load_settings(data_dir=tmp_path / "pg", database_url=postgres_url)).close()
    fill(postgres_url, catalogs.generator)
    assert _rows(postgres_url) == _rows(catalogs.generated_url)
    engine = create_engine(postgres_url)
    with engine.connect() as connection:  # the sequences continue after the loaded ids
        next_id = connection.scalar(text("SELECT nextval('instance_id_seq')"))
    engine.dispose()
    assert next_id == SHAPE.instances + 1


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        (QueryLevel.STUDY, {"ModalitiesInStudy": "MR"}),
        (QueryLevel.STUDY, {"StudyDate": "20150101-20260101"}),
        (QueryLevel.SERIES, {}),
        (QueryLevel.IMAGE, {}),
    ],
)
def test_generated_catalog_answers_qido_alike(
    catalogs: Catalogs, level: QueryLevel, keys: dict[str, str]
) -> None:
    query = parse_query(level, keys, include_all=True)
    answer = run_query(catalogs.generated, query).rows
    assert answer
    assert answer == run_query(catalogs.written, query).rows


def test_fuzzy_name_query_finds_a_generated_patient(catalogs: Catalogs) -> None:
    patient_id = _rows(catalogs.generated_url)["patient"][0]["patient_id"]
    query = parse_query(QueryLevel.STUDY, {"PatientName": patient_id[:6].lower()}, fuzzy=True)
    answer = run_query(catalogs.generated, query).rows
    assert len(answer) == SHAPE.studies_per_patient
    assert answer == run_query(catalogs.written, query).rows


def test_default_shape_is_a_million_instances() -> None:
    assert (Shape().instances, Shape().studies, Shape().patients) == (1_000_000, 10_000, 2_000)
