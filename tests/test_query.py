"""catalog.query: the matching rules of PS3.4 C.2.2.2 / PS3.18 8.3.4, one test each, on SQLite
and PostgreSQL, over an archive with odd studies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from catalog import Database
from catalog.query import (
    REQUIRED_KEYS,
    QueryError,
    QueryLevel,
    QueryResult,
    parse_query,
    run_query,
)
from config import Settings, load_settings
from ingest import Source
from node.app import Core
from tests.query_data import ODD_PATIENT_ID, SECOND_PATIENT_ID, archive


@pytest.fixture
def settings(tmp_path: Path, catalog_url: str) -> Settings:
    """Matching is tested on the values as sent, so de-identification is off here (the
    matching code does not depend on it; test_dicomweb checks answers with it on)."""
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=catalog_url,
        fsync=False,
        dicom_port=0,
        deid={"enabled": False},
    )


@pytest.fixture
def db(core: Core) -> Iterator[Database]:
    for raw in archive():
        result = core.ingestor.accept(raw, Source(door="folder", remote="test"))
        assert result.outcome.success, result.reason
    yield core.db


def find(db: Database, level: QueryLevel, **options: Any) -> QueryResult:
    keys = options.pop("keys", {})
    return run_query(db, parse_query(level, keys, **options))


def values(result: QueryResult, keyword: str) -> list[Any]:
    tag = f"{tag_for_keyword(keyword):08X}"
    return [row[tag].get("Value", [None])[0] for row in result.rows]


def names(result: QueryResult) -> list[str | None]:
    return [v["Alphabetic"] if v else None for v in values(result, "PatientName")]


def test_universal_matching_returns_every_study(db: Database) -> None:
    everything = find(db, QueryLevel.STUDY)
    assert len(everything.rows) == 9
    assert find(db, QueryLevel.STUDY, keys={"PatientName": ""}).rows == everything.rows
    assert find(db, QueryLevel.STUDY, keys={"PatientName": "*"}).rows == everything.rows


def test_single_value_matching_by_keyword_and_by_tag(db: Database) -> None:
    by_keyword = find(db, QueryLevel.STUDY, keys={"PatientID": "MRN261709001"})
    by_tag = find(db, QueryLevel.STUDY, keys={"00100020": "MRN261709001"})
    assert len(by_keyword.rows) == 2
    assert by_tag.rows == by_keyword.rows
    assert find(db, QueryLevel.STUDY, keys={"PatientID": "MRN26170900"}).rows == []


def test_uid_list_matching_with_commas_and_backslashes(db: Database) -> None:
    uids = values(find(db, QueryLevel.STUDY), "StudyInstanceUID")
    chosen = [uids[0], uids[3]]
    for separator in (",", "\\"):
        result = find(db, QueryLevel.STUDY, keys={"StudyInstanceUID": separator.join(chosen)})
        assert values(result, "StudyInstanceUID") == chosen


def test_wildcards_star_and_question_mark_are_case_sensitive_outside_names(db: Database) -> None:
    assert len(find(db, QueryLevel.STUDY, keys={"AccessionNumber": "ACC067484*"}).rows) == 2
    assert len(find(db, QueryLevel.STUDY, keys={"AccessionNumber": "ACC0674840000?"}).rows) == 2
    assert len(find(db, QueryLevel.STUDY, keys={"AccessionNumber": "*0001"}).rows) == 1
    assert find(db, QueryLevel.STUDY, keys={"AccessionNumber": "acc*"}).rows == []


def test_person_names_match_without_case_or_accents(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, keys={"PatientName": "angstrom^asa"})
    assert set(names(result)) == {"Ångström^Åsa"}
    assert names(find(db, QueryLevel.STUDY, keys={"PatientName": "ÅNG*"})) == names(result)
    ideographic = find(db, QueryLevel.STUDY, keys={"PatientName": "*李^娜*"})
    assert set(names(ideographic)) == {"Li^Na"}


def test_fuzzy_person_names_match_words_in_any_order_and_by_sound(db: Database) -> None:
    literal = find(db, QueryLevel.STUDY, keys={"PatientName": "robert johnson"})
    assert literal.rows == []
    for query in ("robert johnson", "ROB JOHN*", "*jonson*", "Johnsen"):
        result = find(db, QueryLevel.STUDY, keys={"PatientName": query}, fuzzy=True)
        assert set(names(result)) == {"JOHNSON^ROBERT^^MR"}, query
    assert find(db, QueryLevel.STUDY, keys={"PatientName": "zzz"}, fuzzy=True).rows == []


def test_referring_physician_fuzzy_match(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, keys={"ReferringPhysicianName": "claudia"}, fuzzy=True)
    referring = values(result, "ReferringPhysicianName")
    assert referring and all("Claudia" in v["Alphabetic"] for v in referring)


def test_date_ranges_closed_open_and_single(db: Database) -> None:
    def dates(value: str) -> list[str]:
        return sorted(values(find(db, QueryLevel.STUDY, keys={"StudyDate": value}), "StudyDate"))

    assert dates("20200425") == ["20200425", "20200425"]
    assert dates("20200101-20201231") == ["20200425", "20200425", "20201004", "20201004"]
    assert dates("20210201-") == ["20210509", "20210509"]
    assert dates("-20200430") == ["20200425", "20200425"]
    assert dates("2020.04.25") == ["20200425", "20200425"]  # ACR-NEMA form


def test_time_range_covers_the_precision_given(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, keys={"StudyTime": "1117-1118"})
    assert values(result, "StudyTime") == ["111749"]
    assert values(find(db, QueryLevel.STUDY, keys={"StudyTime": "11"}), "StudyTime") == [
        "111749",
        "114630",
    ]


def test_empty_value_matching(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, keys={"StudyDescription": '""'})
    assert values(result, "PatientID") == [ODD_PATIENT_ID]


def test_descriptions_match_case_insensitively(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, keys={"StudyDescription": "*brain*"})
    assert set(values(result, "StudyDescription")) == {"MRI BRAIN W/O CONTRAST"}
    assert len(result.rows) == 4


def test_modalities_in_study_matches_any_series(db: Database) -> None:
    mr = find(db, QueryLevel.STUDY, keys={"ModalitiesInStudy": "MR"})
    assert len(mr.rows) == 4
    both = find(db, QueryLevel.STUDY, keys={"ModalitiesInStudy": "CT,MR"})
    assert len(both.rows) == 9
    assert find(db, QueryLevel.STUDY, keys={"ModalitiesInStudy": "US"}).rows == []


def test_limit_offset_and_more_available_in_a_stable_order(db: Database) -> None:
    everything = find(db, QueryLevel.STUDY).rows
    first = find(db, QueryLevel.STUDY, limit=4)
    second = find(db, QueryLevel.STUDY, limit=4, offset=4)
    last = find(db, QueryLevel.STUDY, limit=4, offset=8)
    assert first.more_available and second.more_available and not last.more_available
    assert first.rows + second.rows + last.rows == everything
    assert find(db, QueryLevel.STUDY, limit=9).more_available is False


def test_series_and_instances_of_a_study(db: Database) -> None:
    study = values(find(db, QueryLevel.STUDY, keys={"ModalitiesInStudy": "MR"}), "StudyInstanceUID")
    series = find(db, QueryLevel.SERIES, keys={"StudyInstanceUID": study[0]})
    assert values(series, "SeriesNumber") == [1, 2]
    assert values(series, "Modality") == ["MR", "MR"]
    instances = find(
        db, QueryLevel.IMAGE, keys={"SeriesInstanceUID": values(series, "SeriesInstanceUID")[0]}
    )
    assert values(instances, "InstanceNumber") == [1]
    assert values(instances, "Rows") == [16]


def test_study_uid_under_two_patient_ids_is_one_study_found_under_both(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, keys={"PatientID": "MRN261709001"})
    assert values(result, "NumberOfStudyRelatedInstances") == [3, 2]
    second = find(db, QueryLevel.STUDY, keys={"PatientID": SECOND_PATIENT_ID})
    assert values(second, "StudyInstanceUID") == values(result, "StudyInstanceUID")[:1]
    assert values(second, "PatientID") == [SECOND_PATIENT_ID]
    assert values(second, "NumberOfStudyRelatedInstances") == [3]


def test_patient_level_counts(db: Database) -> None:
    result = find(db, QueryLevel.PATIENT, keys={"PatientID": "MRN261709001"})
    assert values(result, "NumberOfPatientRelatedStudies") == [2]
    assert values(result, "NumberOfPatientRelatedSeries") == [4]
    assert values(result, "NumberOfPatientRelatedInstances") == [5]


@pytest.mark.parametrize("level", list(QueryLevel))
def test_every_row_carries_every_required_key_with_its_vr(db: Database, level: QueryLevel) -> None:
    result = find(db, level)
    assert result.rows
    for row in result.rows:
        for keyword in REQUIRED_KEYS[level]:
            tag = tag_for_keyword(keyword)
            element = row[f"{tag:08X}"]
            assert element["vr"] == dictionary_VR(tag), keyword


def test_includefield_from_the_stored_json_and_lower_levels(db: Database) -> None:
    result = find(db, QueryLevel.STUDY, include=["InstitutionName", "00080060", "00180060"])
    first = result.rows[0]
    assert first["00080080"]["Value"] == ["Springfield General Hospital"]
    assert first["00080060"]["Value"] == ["CT"]
    assert first["00180060"]["vr"] == "DS"  # KVP of the CT
    odd = next(row for row in result.rows if row["00100020"]["Value"] == [ODD_PATIENT_ID])
    assert odd["00100010"] == {"vr": "PN"}  # "^^^^": present, empty


def test_include_all_at_image_level_has_no_bulk_data(db: Database) -> None:
    result = find(db, QueryLevel.IMAGE, include_all=True, limit=1)
    row = result.rows[0]
    assert "7FE00010" not in row
    assert row["00280030"]["vr"] == "DS"  # PixelSpacing, from the stored JSON


def test_unsupported_keys_are_reported_and_ignored(db: Database) -> None:
    query = parse_query(QueryLevel.STUDY, {"PatientAddress": "x", "00400275.00400009": "y"})
    assert query.unsupported == ("PatientAddress", "00400275.00400009")
    assert len(run_query(db, query).rows) == 9


@pytest.mark.parametrize(
    ("keys", "bad"),
    [
        ({"NoSuchKeyword": "1"}, "NoSuchKeyword"),
        ({"StudyDate": "2020-01-01"}, "StudyDate"),
        ({"StudyDate": "20201301"}, "StudyDate"),
        ({"StudyDate": "20211231-20200101"}, "StudyDate"),
        ({"StudyTime": "25"}, "StudyTime"),
        ({"StudyInstanceUID": "1.2.*"}, "StudyInstanceUID"),
        ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
        ({"SeriesNumber": "one"}, "SeriesNumber"),
        ({"PatientID": ["a", "b"]}, "PatientID"),
    ],
)
def test_bad_keys_and_values_name_the_key(keys: dict[str, Any], bad: str) -> None:
    with pytest.raises(QueryError) as raised:
        parse_query(QueryLevel.SERIES, keys)
    assert raised.value.key == bad
    assert str(raised.value).startswith(f"{bad}: ")


@pytest.mark.parametrize(("limit", "offset", "bad"), [(0, 0, "limit"), (10, -1, "offset")])
def test_bad_paging(limit: int, offset: int, bad: str) -> None:
    with pytest.raises(QueryError, match=bad):
        parse_query(QueryLevel.STUDY, {}, limit=limit, offset=offset)
