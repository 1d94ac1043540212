"""The pure parts of export: sequence names, ages, definitions, balancing, splits, zip stream."""

from __future__ import annotations

import io
import random
import zipfile
from collections import Counter

import pytest
from pydantic import ValidationError

from config import load_settings
from config.export import DEFAULT_SEQUENCES, SequenceFamily
from export.archive import CHUNK, ZipStream
from export.definition import Balance, CohortDefinition, check_cohort_name
from export.labels import StudyLabel
from export.query import SeriesRow, age_in_years
from export.selection import balance, split
from export.sequences import SequenceMatcher


@pytest.mark.parametrize(
    ("names", "family"),
    [
        (("T1 AX", "t1_se_tra", "*se2d1"), "T1"),
        (("AX T1 POST GD", None, None), "T1C"),
        (("t1_mprage_sag_p2_iso", None, None), "T1"),
        (("T2 TSE", "t2_tse_tra", None), "T2"),
        (("AX T2 FSE", None, None), "T2"),
        (("Ax T2 FLAIR", None, None), "FLAIR"),
        (("DWI b1000", "ep2d_diff_tra", "*ep_b1000t"), "DWI"),
        (("ep2d_diff_3scan_trace_p2", None, None), "DWI"),
        (("Diffusion weighted", None, None), "DWI"),
        (("dADC", None, None), "ADC"),  # a close word is enough
        (("ADC map", None, None), "ADC"),
        (("Abdomen 5.0 B30f PV", "ABD_PELVIS_PORTAL", None), "portal venous"),
        (("Arterial phase", None, None), "arterial"),
        (("Thorax 5.0 B30f", "CHEST_ROUTINE", None), None),
        (("Localizer", None, None), None),
        ((None, None, None), None),
    ],
)
def test_sequence_families_from_scanner_names(
    names: tuple[str | None, ...], family: str | None
) -> None:
    matcher = SequenceMatcher(DEFAULT_SEQUENCES, 85.0)
    assert matcher.classify(*names) == family


def test_sequence_synonyms_are_configurable_and_fuzzy() -> None:
    families = [SequenceFamily(name="SWI", synonyms=["susceptibility", "swi"])]
    matcher = SequenceMatcher(families, 85.0)
    assert matcher.classify("AX SUSCEPTIBILTY", None, None) == "SWI"  # misspelt by the scanner
    assert matcher.classify("T2 TSE", None, None) is None
    assert matcher.family_named("swi") == "SWI"
    strict = SequenceMatcher(families, 100.0)
    assert strict.classify("AX SUSCEPTIBILTY", None, None) is None


def test_sequences_come_from_settings_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PACSNODE_EXPORT__SEQUENCES", '[{"name": "PD", "synonyms": ["pd", "proton density"]}]'
    )
    monkeypatch.setenv("PACSNODE_EXPORT__DEFAULT_SEED", "42")
    settings = load_settings()
    assert [f.name for f in settings.export.sequences] == ["PD"]
    assert settings.export.default_seed == 42


@pytest.mark.parametrize(
    ("age", "birth", "study", "years"),
    [
        ("045Y", None, None, 45.0),
        ("006M", None, None, 0.5),
        ("026W", None, None, 0.5),
        ("010D", None, None, 0.03),
        (None, "19800615", "20200614", 40.0),
        ("", "19800615", "20200616", 40.0),
        ("bad", None, "20200101", None),
        (None, "20200101", "19990101", None),
        (None, None, None, None),
    ],
)
def test_age_at_exam(
    age: str | None, birth: str | None, study: str | None, years: float | None
) -> None:
    result = age_in_years(age, birth, study)
    if years is None:
        assert result is None
    else:
        assert result == pytest.approx(years, abs=0.01)


def test_definition_round_trips_as_json_and_refuses_unknown_keys() -> None:
    definition = CohortDefinition.model_validate(
        {
            "filters": {"modalities": ["MR"], "labels": [{"task": "t", "classes": ["1"]}]},
            "balance": {"by": "label:t", "mode": "cap", "cap": 3},
            "split": {"fractions": {"train": 0.8, "test": 0.2}},
            "seed": 5,
        }
    )
    assert CohortDefinition.model_validate_json(definition.model_dump_json()) == definition
    assert definition.label_tasks() == ["t"]
    assert definition.split_by() == "label:t"
    with pytest.raises(ValidationError, match="Extra inputs"):
        CohortDefinition.model_validate({"filter": {}})
    with pytest.raises(ValidationError, match="needs a cap"):
        Balance(by="sex", mode="cap")
    with pytest.raises(ValueError, match="invalid cohort name"):
        check_cohort_name("1st cohort")


def _rows(patients: int, per_patient: int, classes: str, seed: int = 0) -> list[SeriesRow]:
    rng = random.Random(seed)
    rows = []
    for p in range(patients):
        value = classes[rng.randrange(len(classes))]
        for s in range(per_patient):
            rows.append(
                SeriesRow(
                    series_pk=p * 100 + s,
                    series_uid=f"2.25.{p}.{s}",
                    study_uid=f"2.25.{p}",
                    patient_id=f"P{p:03d}",
                    sex="F" if p % 2 else "M",
                    age=40.0,
                    study_date="20200101",
                    modality="MR",
                    sequence="T2",
                    series_description=None,
                    body_part="HEAD",
                    institution=None,
                    slice_thickness=5.0,
                    instances=10,
                    labels={"malignancy": StudyLabel("malignancy", value)},
                )
            )
    return rows


def test_split_by_patient_never_leaks_and_is_stratified() -> None:
    rows = _rows(200, 3, "0001")  # about one in four patients malignant
    result = split(rows, {"train": 0.7, "validation": 0.15, "test": 0.15}, "label:malignancy", 1)
    by_patient: dict[str, set[str]] = {}
    for row in result:
        by_patient.setdefault(row.patient_id, set()).add(row.split)
    assert all(len(s) == 1 for s in by_patient.values())
    totals = Counter(r.group("label:malignancy") for r in result)
    for name, fraction in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
        for value, total in totals.items():
            share = sum(
                1 for r in result if r.split == name and r.group("label:malignancy") == value
            )
            assert share == pytest.approx(fraction * total, abs=3)
    assert (
        split(rows, {"train": 0.7, "validation": 0.15, "test": 0.15}, "label:malignancy", 1)
        == result
    )
    assert (
        split(rows, {"train": 0.7, "validation": 0.15, "test": 0.15}, "label:malignancy", 2)
        != result
    )


def test_balance_undersamples_or_caps() -> None:
    rows = _rows(60, 1, "0001", seed=4)
    counts = Counter(r.group("label:malignancy") for r in rows)
    even = balance(rows, Balance(by="label:malignancy"), seed=0)
    assert Counter(r.group("label:malignancy") for r in even) == {
        "0": counts["1"],
        "1": counts["1"],
    }
    capped = balance(rows, Balance(by="label:malignancy", mode="cap", cap=20), seed=0)
    assert Counter(r.group("label:malignancy") for r in capped) == {
        "0": 20,
        "1": min(20, counts["1"]),
    }
    assert [r.series_uid for r in even] == sorted(
        (r.series_uid for r in even), key=rows_order(rows)
    )
    assert balance(rows, Balance(by="label:other"), seed=0) == []


def rows_order(rows: list[SeriesRow]):  # type: ignore[no-untyped-def]
    order = {r.series_uid: i for i, r in enumerate(rows)}
    return lambda uid: order[uid]


def test_zip_stream_hands_over_small_chunks_and_makes_a_valid_archive() -> None:
    stream = ZipStream((2026, 1, 2, 3, 4, 5))
    payload = bytes(range(256)) * (5 * CHUNK // 256 + 7)  # five chunks and a bit
    chunks = [
        *stream.add_stream("data/a.dcm", io.BytesIO(payload)),
        *stream.add_bytes("manifest.csv", b"case_id,sex\n" * 1000),
        *stream.close(),
    ]
    assert max(len(c) for c in chunks) <= CHUNK + 1024
    assert sum(1 for c in chunks if c) >= 6
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert archive.read("data/a.dcm") == payload
    assert archive.getinfo("data/a.dcm").compress_type == zipfile.ZIP_STORED
    assert archive.getinfo("manifest.csv").compress_type == zipfile.ZIP_DEFLATED
    assert archive.getinfo("manifest.csv").date_time == (2026, 1, 2, 3, 4, 4)
