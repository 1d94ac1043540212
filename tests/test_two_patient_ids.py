"""A study whose instances arrive under two Patient IDs is found under each (pseudonymised)
Patient ID, by C-FIND and QIDO-RS, on SQLite and PostgreSQL; the answer carries the patient
that matched. Also on a catalog created by the revision before ``study_patient``."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import MetaData, insert, select

import catalog.db
from catalog import CatalogWriter, Database, RetrieveKeys, extract, locate_keys, to_dicom_json
from catalog.models import Instance, StudyPatient
from catalog.query import QueryLevel, QueryResult, parse_query, run_query
from config import load_settings
from deid import load_pseudonymizer
from ingest import Outcome, Source
from node.app import Core
from tests.dicom_bytes import part10, sample
from tests.peers import HOST, dcmtk, free_port, pacsnode_process, storescu

SOURCE = Source(door="folder", remote="test")
SECOND_ID = "MRN-MERGED-77"


def under_second_id(*, new_series: bool = False) -> Dataset:
    """Another instance of CT_small.dcm's study (and series), sent under another Patient ID."""
    ds = sample("CT_small.dcm")
    ds.PatientID = SECOND_ID
    ds.PatientName = "Merged^Record"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if new_series:
        ds.SeriesInstanceUID = generate_uid()
    return ds


def first_values(result: QueryResult, keyword: str) -> list[Any]:
    tag = f"{tag_for_keyword(keyword):08X}"
    return [row[tag].get("Value", [None])[0] for row in result.rows]


def find(db: Database, level: QueryLevel, **keys: str) -> QueryResult:
    return run_query(db, parse_query(level, keys))


@pytest.fixture
def twice_registered(core: Core) -> tuple[Core, str, str, str]:
    """CT_small.dcm, then two instances of its study under a second Patient ID (one in the
    same series, one in a new series); the pseudonyms of both IDs and the stored study."""
    first = core.ingestor.accept(part10(sample("CT_small.dcm")), SOURCE)
    for ds in (under_second_id(), under_second_id(new_series=True)):
        assert core.ingestor.accept(part10(ds), SOURCE).outcome is Outcome.STORED
    original = sample("CT_small.dcm")
    issuer = str(original.get("IssuerOfPatientID", ""))
    pseudo_first = core.pseudonymizer.patient_id(original.PatientID, issuer)
    pseudo_second = core.pseudonymizer.patient_id(SECOND_ID, issuer)
    assert first.study_instance_uid
    return core, pseudo_first, pseudo_second, first.study_instance_uid


def test_the_study_is_found_under_each_patient_id_with_that_patient(
    twice_registered: tuple[Core, str, str, str],
) -> None:
    core, first, second, study = twice_registered
    for pseudonym in (first, second):
        result = find(core.db, QueryLevel.STUDY, PatientID=pseudonym)
        assert first_values(result, "StudyInstanceUID") == [study]
        assert first_values(result, "PatientID") == [pseudonym]
        assert first_values(result, "NumberOfStudyRelatedInstances") == [3]
    universal = find(core.db, QueryLevel.STUDY)
    assert first_values(universal, "PatientID") == [first]  # the first it was stored under
    both = find(core.db, QueryLevel.STUDY, PatientID="*?*")  # a pattern both IDs match
    assert first_values(both, "PatientID") == [first]
    assert len(find(core.db, QueryLevel.SERIES, PatientID=second).rows) == 2
    assert len(find(core.db, QueryLevel.IMAGE, PatientID=second).rows) == 3
    patient = find(core.db, QueryLevel.PATIENT, PatientID=second)
    assert first_values(patient, "NumberOfPatientRelatedStudies") == [1]
    assert first_values(patient, "NumberOfPatientRelatedInstances") == [3]
    assert find(core.db, QueryLevel.STUDY, PatientID="NOT-A-PATIENT").rows == []
    moved = locate_keys(core.db, RetrieveKeys(patient_ids=(second,)))
    assert len(moved) == 3


def test_a_replaced_version_under_another_patient_id_links_it_too(core: Core) -> None:
    core.ingestor.accept(part10(sample("CT_small.dcm")), SOURCE)
    corrected = sample("CT_small.dcm")
    corrected.PatientID = SECOND_ID
    assert core.ingestor.accept(part10(corrected), SOURCE).outcome is Outcome.REPLACED
    second = core.pseudonymizer.patient_id(SECOND_ID, str(corrected.get("IssuerOfPatientID", "")))
    assert len(find(core.db, QueryLevel.STUDY, PatientID=second).rows) == 1


# ------------------------------------------------------------------- a catalog from 0004


def _upgrade(db: Database, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(catalog.db.__file__).parent / "migrations"))
    with db.write_engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def _record(ds: Dataset):  # type: ignore[no-untyped-def]
    return extract(
        ds, to_dicom_json(ds, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    )


class _Blob:
    def __init__(self, n: int) -> None:
        self.key, self.sha256, self.size = f"{n:032x}", f"{n:064x}", 100


def test_a_catalog_of_the_previous_revision_finds_its_studies_under_both(
    catalog_url: str,
) -> None:
    db = Database(catalog_url)
    try:
        _upgrade(db, "0004")  # the schema before content hashes and study_patient
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        old = MetaData()
        with db.write() as session:
            connection = session.connection()
            old.reflect(connection)
            assert "study_patient" not in old.tables
            assert "content_sha256" not in old.tables["instance"].c
            record = _record(ds)
            now = datetime.now(UTC)
            patient_pk = connection.execute(
                insert(old.tables["patient"]).values(
                    patient_id=ds.PatientID, issuer_of_patient_id="", created_at=now
                )
            ).inserted_primary_key[0]
            study_pk = connection.execute(
                insert(old.tables["study"]).values(
                    patient_pk=patient_pk,
                    study_instance_uid=ds.StudyInstanceUID,
                    modalities_in_study="CT",
                    number_of_series=1,
                    number_of_instances=1,
                    total_bytes=100,
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            series_pk = connection.execute(
                insert(old.tables["series"]).values(
                    study_pk=study_pk,
                    series_instance_uid=ds.SeriesInstanceUID,
                    modality="CT",
                    number_of_instances=1,
                    created_at=now,
                )
            ).inserted_primary_key[0]
            connection.execute(
                insert(old.tables["instance"]).values(
                    series_pk=series_pk,
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    blob_key="0" * 32,
                    sha256="0" * 64,
                    size=100,
                    version=1,
                    metadata_json=record.metadata_json,
                    source_door="dimse",
                    received_at=now,
                )
            )

        db.migrate()

        with db.read() as session:
            assert session.execute(
                select(StudyPatient.study_pk, StudyPatient.patient_pk)
            ).all() == [(study_pk, patient_pk)]
            assert session.scalars(select(Instance.content_sha256)).all() == [None]
        other = under_second_id()
        CatalogWriter(db).index(_record(other), _Blob(2), door="folder", aet=None)
        for patient_id in (ds.PatientID, SECOND_ID):
            result = find(db, QueryLevel.STUDY, PatientID=patient_id)
            assert first_values(result, "StudyInstanceUID") == [ds.StudyInstanceUID]
            assert first_values(result, "PatientID") == [patient_id]
    finally:
        db.dispose()


# ------------------------------------------------------------- a node, real clients


@pytest.mark.slow
def test_findscu_and_qido_find_the_study_under_the_second_patient_id(
    catalog_url: str, tmp_path: Path
) -> None:
    data_dir, env = tmp_path / "data", {"PACSNODE_DATABASE_URL": catalog_url}
    second_file = tmp_path / "second.dcm"
    under_second_id().save_as(second_file, enforce_file_format=True)
    ct = Path(get_testdata_file("CT_small.dcm"))
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port(), env=env) as node:
        assert storescu([ct], port=node.dicom_port, aet_called="PACSNODE").ok
        assert storescu([second_file], port=node.dicom_port, aet_called="PACSNODE").ok
        pseudonyms = load_pseudonymizer(load_settings(data_dir=data_dir), create=False)
        issuer = str(sample().get("IssuerOfPatientID", ""))
        second = pseudonyms.patient_id(SECOND_ID, issuer)
        study = pseudonyms.uid(sample().StudyInstanceUID)

        answers_dir = tmp_path / "answers"
        answers_dir.mkdir()
        found = subprocess.run(
            [
                dcmtk("findscu"),
                "-S",
                "-aec",
                "PACSNODE",
                "-X",
                "-od",
                str(answers_dir),
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"PatientID={second}",
                "-k",
                "StudyInstanceUID",
                "-k",
                "NumberOfStudyRelatedInstances",
                HOST,
                str(node.dicom_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert found.returncode == 0, found.stderr
        answers = [dcmread(path) for path in sorted(answers_dir.glob("rsp*.dcm"))]
        assert [(a.StudyInstanceUID, a.PatientID) for a in answers] == [(study, second)]
        assert answers[0].NumberOfStudyRelatedInstances == 2

        qido = httpx.get(f"{node.url}/dicom-web/studies", params={"PatientID": second}, timeout=30)
        assert qido.status_code == 200, qido.text
        [match] = qido.json()
        assert match["0020000D"]["Value"] == [study]
        assert match["00100020"]["Value"] == [second]
