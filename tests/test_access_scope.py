"""Project scope in the core: what a caller scoped to projects finds in the catalog.

On SQLite and PostgreSQL, over studies of one patient stored for two projects.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid

from catalog.query import QueryLevel, parse_query, run_query
from ingest import Source
from node.app import Core
from tests.dicom_bytes import part10, sample


def store(core: Core, name: str, project: str, study: str, *, instances: int = 1) -> str:
    """``instances`` of pydicom's ``name`` in a new study of ``project`` (patient PAT-1);
    the stored (de-identified) Study Instance UID."""
    stored = ""
    series = generate_uid()
    for _ in range(instances):
        ds = sample(name)
        ds.PatientID, ds.PatientName = "PAT-1", "Doe^Jane"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        result = core.ingestor.accept(
            part10(ds), Source(door="stow", remote="test", projects=(project,))
        )
        assert result.outcome.success, result.reason
        stored = str(result.study_instance_uid)
    return stored


def value(row: dict[str, Any], keyword: str) -> Any:
    return row[f"{tag_for_keyword(keyword):08X}"].get("Value", [None])[0]


def test_patient_level_counts_and_attributes_cover_only_the_callers_studies(core: Core) -> None:
    """A patient with a study in project b (stored first) and one in project a: a caller of
    a finds the patient with one study, one series, one instance, and the study UID its
    answer carries (from a representative instance) is a's, never b's."""
    in_b = store(core, "MR_small.dcm", "b", generate_uid(), instances=2)
    in_a = store(core, "CT_small.dcm", "a", generate_uid())
    query = parse_query(
        QueryLevel.PATIENT,
        {"PatientID": ""},
        include=["StudyInstanceUID", "StudyDescription"],
    )
    counts = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries")
    keys = (*counts, "NumberOfPatientRelatedInstances")

    def answer(projects: frozenset[str] | None) -> list[tuple[Any, ...]]:
        rows = run_query(core.db, replace(query, projects=projects))
        return [tuple(value(row, k) for k in (*keys, "StudyInstanceUID")) for row in rows.rows]

    assert answer(None) == [(2, 2, 3, in_b)]
    assert answer(frozenset({"a"})) == [(1, 1, 1, in_a)]
    assert answer(frozenset({"b"})) == [(1, 1, 2, in_b)]
    assert answer(frozenset({"a", "b"})) == [(2, 2, 3, in_b)]
    assert answer(frozenset({"c"})) == []
