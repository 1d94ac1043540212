"""Cohorts and exports on a real catalog (SQLite and PostgreSQL) and a real blob store.

The synthetic dataset goes in through the ingest pipeline; cohorts are defined, previewed,
frozen and exported in each format, and the results are checked against the catalog.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from collections import Counter
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from catalog.models import AuditEvent, ExportRun, Instance, Label, Series
from export import (
    AlreadyFrozenError,
    CohortNotFoundError,
    Cohorts,
    DestinationError,
    DiskFullError,
    EmptyCohortError,
    Exporter,
    ExportError,
    FrozenDataChangedError,
    InvalidDefinitionError,
    NotFrozenError,
)
from export.writers import NiftiWriter
from ingest import Source
from labeling import IncomingReport
from labeling.labels import apply_review
from node.app import Core, build_label_source
from tests.synthetic import SyntheticDataset, SyntheticSpec, derive_uid, generate, make_instance

SPEC = SyntheticSpec(patients=8, ct_slices=4, mr_slices=3, rows=16, columns=16, seed=7)
"""8 patients, each one CT study (4 slices) and one MR study (T1 + T2 or DWI, 3 slices)."""


def ingest_files(core: Core, files: list[Path]) -> None:
    for file in files:
        result = core.ingestor.accept(file.read_bytes(), Source(door="folder", remote="test"))
        assert result.outcome.success, result.reason


@pytest.fixture
def synthetic(tmp_path: Path) -> SyntheticDataset:
    return generate(tmp_path / "synthetic", SPEC)


@pytest.fixture
def loaded(core: Core, synthetic: SyntheticDataset) -> Core:
    ingest_files(core, list(synthetic.files))
    return core


@pytest.fixture
def cohorts(loaded: Core) -> Cohorts:
    return Cohorts(
        loaded.db, loaded.settings.export, build_label_source(loaded.report_intake.tasks)
    )


@pytest.fixture
def exporter(loaded: Core, cohorts: Cohorts) -> Exporter:
    return Exporter(loaded.db, loaded.blobs, cohorts, loaded.settings.export)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


# ------------------------------------------------------------------------------- define


def test_filters_select_what_the_catalog_holds(cohorts: Cohorts) -> None:
    cohorts.define("mr", {"filters": {"modalities": ["mr"]}}, actor="t")
    preview = cohorts.preview("mr")
    assert preview["patients"] == 8
    assert preview["series"] == 16
    assert preview["instances"] == 16 * 3
    assert preview["modality"] == {"MR": 16}
    assert set(preview["sequence"]) <= {"T1", "T2", "DWI"}
    assert preview["sequence"]["T1"] == 8

    cohorts.define("dwi", {"filters": {"sequences": ["dwi"], "sexes": ["F"]}}, actor="t")
    dwi = cohorts.select(cohorts.get("dwi").definition)
    assert dwi and all(r.sequence == "DWI" and r.sex == "F" for r in dwi)
    assert all(r.series_description == "DWI b1000" for r in dwi)

    old = cohorts.select(
        cohorts.parse({"filters": {"age_min": 60, "slice_thickness_max": 5, "min_instances": 4}})
    )
    assert old and all(r.age is not None and r.age >= 60 and r.modality == "CT" for r in old)


def test_versions_and_references(cohorts: Cohorts) -> None:
    first = cohorts.define("c", {"filters": {"modalities": ["CT"]}}, actor="t")
    second = cohorts.define("c", {"filters": {"modalities": ["MR"]}}, actor="t")
    assert (first.version, second.version) == (1, 2)
    assert cohorts.get("c").version == 2
    assert cohorts.get("c@1").definition.filters.modalities == ["CT"]
    assert cohorts.get(str(first.id)).ref == "c@1"
    assert [i.ref for i in cohorts.all_versions()] == ["c@1", "c@2"]
    with pytest.raises(CohortNotFoundError, match="no cohort 'c@3'"):
        cohorts.get("c@3")


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"filters": {"labels": [{"task": "malignancy"}]}}, "unknown label task 'malignancy'"),
        ({"filters": {"sequences": ["SWI"]}}, "unknown sequence 'SWI'"),
        ({"filters": {"age_min": 50, "age_max": 20}}, "age_min is greater than age_max"),
        ({"balance": {"by": "colour"}}, "cannot group by 'colour'"),
        ({"split": {"fractions": {"train": 0.9, "test": 0.2}}}, "add up to 1"),
        ({"filters": {"modality": ["CT"]}}, "filters.modality"),
    ],
)
def test_bad_definitions_are_refused_with_the_reason(
    cohorts: Cohorts, definition: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidDefinitionError, match=message):
        cohorts.define("bad", definition, actor="t")
    assert cohorts.all_versions() == []


def test_unknown_class_of_a_known_task_is_refused(cohorts: Cohorts) -> None:
    with pytest.raises(InvalidDefinitionError, match=r"unknown class '7' .*1 = malignant"):
        cohorts.define(
            "x", {"filters": {"labels": [{"task": "lung_nodule", "classes": ["7"]}]}}, actor="t"
        )


# ------------------------------------------------------------------------ balance / split


def test_patient_level_split_has_no_leak_and_follows_the_fractions(cohorts: Cohorts) -> None:
    cohorts.define(
        "s",
        {"split": {"fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}, "seed": 3},
        actor="t",
    )
    rows = cohorts.select(cohorts.get("s").definition)
    splits_of = {}
    for row in rows:
        splits_of.setdefault(row.patient_id, set()).add(row.split)
    assert all(len(splits) == 1 for splits in splits_of.values())
    per_split = Counter(next(iter(s)) for s in splits_of.values())
    assert per_split == {"train": 4, "validation": 2, "test": 2}
    again = cohorts.select(cohorts.get("s").definition)
    assert [r.split for r in again] == [r.split for r in rows]


def test_split_is_stratified_by_its_grouping(cohorts: Cohorts) -> None:
    definition = cohorts.parse(
        {
            "filters": {"modalities": ["CT"]},
            "split": {"fractions": {"a": 0.5, "b": 0.5}, "by": "body_part"},
        }
    )
    rows = cohorts.select(definition)
    by_part = Counter((r.body_part, r.split) for r in rows)
    for part in {r.body_part for r in rows}:
        assert abs(by_part[(part, "a")] - by_part[(part, "b")]) <= 1


def test_balancing_gives_the_counts_asked(cohorts: Cohorts) -> None:
    base = {"filters": {"modalities": ["MR"]}}
    unbalanced = Counter(r.sequence for r in cohorts.select(cohorts.parse(base)))
    assert unbalanced["T1"] == 8 and unbalanced["T2"] + unbalanced["DWI"] == 8
    smallest = min(unbalanced.values())
    even = cohorts.select(cohorts.parse({**base, "balance": {"by": "sequence"}}))
    assert Counter(r.sequence for r in even) == {s: smallest for s in unbalanced}
    capped = cohorts.select(
        cohorts.parse({**base, "balance": {"by": "sequence", "mode": "cap", "cap": 5}})
    )
    assert Counter(r.sequence for r in capped) == {s: min(n, 5) for s, n in unbalanced.items()}
    other_seed = cohorts.select(cohorts.parse({**base, "balance": {"by": "sequence"}, "seed": 99}))
    assert Counter(r.sequence for r in other_seed) == Counter(r.sequence for r in even)


# ------------------------------------------------------------------------------- freeze


def test_freeze_pins_the_instances_and_new_data_does_not_change_the_export(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("ct", {"filters": {"modalities": ["CT"]}, "split": {}}, actor="t")
    with pytest.raises(NotFrozenError, match="not frozen"):
        exporter.to_folder("ct", "dicom", tmp_path / "early", actor="t")
    frozen = cohorts.freeze("ct", actor="t")
    assert frozen.series == 8 and frozen.instances == 32
    assert frozen.manifest_sha256 and len(frozen.manifest_sha256) == 64
    with pytest.raises(AlreadyFrozenError):
        cohorts.freeze("ct", actor="t")

    first = exporter.to_folder("ct", "dicom", tmp_path / "one", actor="t")
    more = SyntheticSpec(patients=2, ct_slices=4, mr_slices=3, rows=16, columns=16, seed=8)
    ingest_files(loaded, list(generate(tmp_path / "later", more).files))
    assert cohorts.preview(cohorts.get("ct").definition)["series"] == 10  # the query grew
    second = exporter.to_folder("ct", "dicom", tmp_path / "two", actor="t")
    assert (first.files, second.files) == (32, 32)
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")
    assert cohorts.preview("ct")["series"] == 8  # a frozen preview shows the frozen members


def test_an_empty_cohort_cannot_be_frozen_or_exported(
    cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("none", {"filters": {"modalities": ["XA"]}}, actor="t")
    assert cohorts.preview("none")["series"] == 0
    with pytest.raises(EmptyCohortError, match="matches no series"):
        cohorts.freeze("none", actor="t")
    with pytest.raises(NotFrozenError):
        exporter.to_zip("none", "dicom", actor="t")
    assert not (tmp_path / "out").exists()


def test_a_replaced_instance_stops_the_export_of_a_frozen_cohort(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("ct", {"filters": {"modalities": ["CT"]}}, actor="t")
    cohorts.freeze("ct", actor="t")
    changed = make_instance(SPEC, patient=0, study=0, series=0, instance_number=1)
    pixels = bytearray(changed.PixelData)
    pixels[0] ^= 1  # a new version of the image (survives any de-identification)
    changed.PixelData = bytes(pixels)
    buffer = io.BytesIO()
    changed.save_as(buffer, enforce_file_format=True)
    assert loaded.ingestor.accept(buffer.getvalue(), Source("folder", "t")).outcome.value == (
        "replaced"
    )
    with pytest.raises(FrozenDataChangedError, match="replaced by another version"):
        exporter.to_folder("ct", "dicom", tmp_path / "out", actor="t")


# ------------------------------------------------------------------------------- export


def test_dicom_export_matches_the_catalog(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("mr", {"filters": {"modalities": ["MR"]}, "split": {}}, actor="t")
    cohorts.freeze("mr", actor="t")
    out = tmp_path / "out"
    summary = exporter.to_folder("mr", "dicom", out, actor="researcher")
    assert summary.files == 48 and not summary.skipped

    with loaded.db.read() as session:
        stored = {
            uid: (sha, series)
            for uid, sha, series in session.execute(
                select(Instance.sop_instance_uid, Instance.sha256, Series.series_instance_uid)
                .join(Series)
                .where(Series.modality == "MR")
            )
        }
    files = read_csv(out / "manifest_files.csv")
    assert {row["sop_instance_uid"] for row in files} == set(stored)
    for row in files:
        data = (out / row["path"]).read_bytes()
        assert (
            hashlib.sha256(data).hexdigest() == row["sha256"] == stored[row["sop_instance_uid"]][0]
        )
        assert row["series_uid"] == stored[row["sop_instance_uid"]][1]
        assert dcmread(io.BytesIO(data)).PatientID == row["case_id"]
        assert row["path"].startswith(
            f"data/{row['case_id']}/{row['study_uid']}/{row['series_uid']}/"
        )
    series = read_csv(out / "manifest_series.csv")
    assert list(series[0])[:3] == ["case_id", "sex", "age"]
    assert len(series) == 16 and {r["status"] for r in series} == {"exported"}
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["freeze"]["manifest_sha256"] == cohorts.get("mr").manifest_sha256
    assert dataset["counts"]["instances"] == 48
    deidentification = dataset["deidentification"]  # as the stored instances declare it
    assert deidentification["patient_identity_removed"] == {"YES": 16}
    assert "113100" in {option["code"] for option in deidentification["options"]}
    assert deidentification["methods"]
    parquet = __import__("pyarrow.parquet", fromlist=["x"]).read_table(
        out / "manifest_series.parquet"
    )
    assert parquet.column("series_uid").to_pylist() == [r["series_uid"] for r in series]

    with loaded.db.read() as session:
        run = session.scalars(select(ExportRun)).one()
        events = [
            (e.actor, e.action, e.target, e.outcome)
            for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    assert (run.status, run.files, run.actor) == ("done", 48, "researcher")
    target = f"export_run:{run.id} cohort:mr@1"
    assert events == [
        ("t", "cohort_define", "cohort:mr@1", "ok"),
        ("t", "cohort_freeze", "cohort:mr@1", "ok"),
        ("researcher", "export", target, "started"),
        ("researcher", "export", target, "done"),
    ]


def test_reexport_gives_byte_identical_manifests(
    cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define(
        "all", {"split": {}, "balance": {"by": "modality", "mode": "cap", "cap": 12}}, actor="t"
    )
    cohorts.freeze("all", actor="t")
    for fmt in ("dicom", "nifti", "png"):
        exporter.to_folder("all", fmt, tmp_path / f"{fmt}-1", actor="t")
        exporter.to_folder("all", fmt, tmp_path / f"{fmt}-2", actor="t")
        one, two = tree_digest(tmp_path / f"{fmt}-1"), tree_digest(tmp_path / f"{fmt}-2")
        assert one == two, fmt
        assert {"manifest_series.csv", "manifest_series.parquet", "dataset.json"} <= set(one)
        documented = (Path(__file__).parents[1] / "docs" / "export.md").read_text()
        for manifest in ("manifest_series.csv", "manifest_files.csv"):
            if manifest in one:
                header = (tmp_path / f"{fmt}-1" / manifest).read_text().splitlines()[0]
                dataset = json.loads((tmp_path / f"{fmt}-1" / "dataset.json").read_text())
                for column in header.split(","):  # task columns are documented as `T_...`
                    if not any(column.startswith(t) for t in dataset["label_schema"]):
                        assert f"`{column}`" in documented, f"docs/export.md misses {column}"


def test_nifti_volume_keeps_the_dicom_geometry(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("t1", {"filters": {"sequences": ["T1"]}}, actor="t")
    cohorts.freeze("t1", actor="t")
    out = tmp_path / "out"
    exporter.to_folder("t1", "nifti", out, actor="t")
    rows = read_csv(out / "manifest_series.csv")
    assert len(rows) == 8 and all(r["shape"] == "16x16x3" for r in rows)
    row = rows[0]
    image = nib.load(out / row["path"])
    stored = (dcmread(p) for p in Path(loaded.settings.blob_root).rglob("*.dcm"))
    slices = [ds for ds in stored if ds.SeriesInstanceUID == row["series_uid"]]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    volume = np.asarray(image.dataobj)
    for k, ds in enumerate(slices):
        for i, j in ((0, 0), (5, 3), (15, 15)):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
            # IOP is (1,0,0,0,1,0): column i moves along +x (LPS), row j along +y
            expected_lps = np.array([x + i * col_mm, y + j * row_mm, z])
            ras = image.affine @ np.array([i, j, k, 1.0])
            assert np.allclose(ras[:3], expected_lps * [-1, -1, 1], atol=1e-3)
            value = ds.pixel_array[j, i] * float(ds.get("RescaleSlope", 1)) + float(
                ds.get("RescaleIntercept", 0)
            )
            assert volume[i, j, k] == value
    assert image.header["sform_code"] == 1 and image.header["qform_code"] == 1


def test_a_series_that_cannot_be_a_volume_is_skipped_and_the_export_goes_on(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    flat = []
    for number in (1, 2, 3):
        ds = make_instance(SPEC, patient=1, study=1, series=0, instance_number=number)
        ds.SeriesInstanceUID = derive_uid(99, "no geometry")
        ds.SOPInstanceUID = derive_uid(99, "no geometry", number)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "T1 scout"
        del ds.ImagePositionPatient
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        flat.append(buffer.getvalue())
    stored = [loaded.ingestor.accept(data, Source("folder", "t")) for data in flat]
    assert all(result.outcome.success for result in stored)
    flat_uid = stored[0].series_instance_uid  # as stored (de-identified, if it is on)
    cohorts.define("t1", {"filters": {"sequences": ["T1"]}}, actor="t")
    cohorts.freeze("t1", actor="t")
    summary = exporter.to_folder("t1", "nifti", tmp_path / "out", actor="t")
    assert [uid for uid, _ in summary.skipped] == [flat_uid]
    assert "ImagePositionPatient" in summary.skipped[0][1]
    rows = {r["series_uid"]: r for r in read_csv(tmp_path / "out" / "manifest_series.csv")}
    assert len(rows) == 9
    bad = rows[str(flat_uid)]
    assert (bad["status"], bad["files"], bad["path"]) == ("skipped", "0", "")
    assert "no ImagePositionPatient" in bad["skip_reason"]
    assert sum(r["status"] == "exported" for r in rows.values()) == 8


def test_png_slices_are_windowed(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    from PIL import Image

    cohorts.define("ct", {"filters": {"modalities": ["CT"]}}, actor="t")
    cohorts.freeze("ct", actor="t")
    exporter.to_folder("ct", "png", tmp_path / "out", actor="t")
    files = read_csv(tmp_path / "out" / "manifest_files.csv")
    assert len(files) == 32
    assert {(r["window_center"], r["window_width"]) for r in files} == {("40.0", "400.0")}
    stored = {
        i.pinned.sop_instance_uid: i
        for s in cohorts.frozen("ct").series
        for i in exporter.stored_instances(s)
    }
    darkest, brightest = 255, 0
    for row in files:
        image = np.asarray(Image.open(tmp_path / "out" / row["path"]))
        assert image.dtype == np.uint8 and image.shape == (16, 16)
        ds = dcmread(loaded.blobs.path_of(stored[row["sop_instance_uid"]].blob_key))
        hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.clip(np.rint(((hounsfield - 39.5) / 399 + 0.5) * 255), 0, 255)
        assert np.array_equal(image, expected.astype(np.uint8))  # soft-tissue window 40/400
        darkest, brightest = min(darkest, image.min()), max(brightest, image.max())
    assert (darkest, brightest) == (0, 255)  # air is black, bone is white


# ------------------------------------------------------------------------ resume / disk


def test_an_interrupted_export_resumes_and_keeps_what_was_written(
    cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("mr", {"filters": {"modalities": ["MR"]}}, actor="t")
    cohorts.freeze("mr", actor="t")
    out = tmp_path / "out"
    calls = 0

    def interrupt_after_five(_: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        exporter.to_folder("mr", "nifti", out, actor="t", progress=interrupt_after_five)
    assert not (out / "dataset.json").exists()
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert len(written) == 5
    victim = sorted(written)[0]
    victim.write_bytes(b"torn")  # a damaged file is written again
    summary = exporter.to_folder("mr", "nifti", out, actor="t")
    assert summary.reused_series == 4
    for path, mtime in written.items():
        if path != victim:
            assert path.stat().st_mtime_ns == mtime
    assert victim.read_bytes()[:2] == b"\x1f\x8b"
    fresh = tmp_path / "fresh"
    exporter.to_folder("mr", "nifti", fresh, actor="t")
    assert tree_digest(out) == tree_digest(fresh)
    with pytest.raises(DestinationError, match="holds an export of cohort mr@1 as nifti"):
        exporter.to_folder("mr", "png", out, actor="t")


def test_a_full_disk_stops_the_export_with_a_message_and_it_resumes(
    cohorts: Cohorts, exporter: Exporter, loaded: Core, tiny_filesystem: Path
) -> None:
    cohorts.define("all", {}, actor="t")
    cohorts.freeze("all", actor="t")
    out = tiny_filesystem / "export"
    with pytest.raises(DiskFullError, match="is full; free some space and run the same export"):
        exporter.to_folder("all", "dicom", out, actor="t")
    assert not list(out.rglob(".tmp-*"))
    partial = len(list(out.rglob("*.dcm")))
    assert 0 < partial < 80
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_filesystem)], check=True)
    summary = exporter.to_folder("all", "dicom", out, actor="t")
    assert summary.files == 80 and summary.reused_series > 0
    assert (out / "dataset.json").exists()
    with loaded.db.read() as session:
        statuses = [r.status for r in session.scalars(select(ExportRun).order_by(ExportRun.id))]
    assert statuses == ["interrupted", "done"]


def test_a_folder_with_other_files_is_refused(
    cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("ct", {"filters": {"modalities": ["CT"]}}, actor="t")
    cohorts.freeze("ct", actor="t")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    with pytest.raises(DestinationError, match="not empty"):
        exporter.to_folder("ct", "dicom", tmp_path / "busy", actor="t")


def test_zip_holds_the_same_files_as_the_folder_export(
    cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    import zipfile

    cohorts.define("mr", {"filters": {"modalities": ["MR"]}}, actor="t")
    cohorts.freeze("mr", actor="t")
    exporter.to_folder("mr", "png", tmp_path / "folder", actor="t")
    download = exporter.to_zip("mr", "png", actor="t")
    chunks = list(download.chunks)
    assert max(len(c) for c in chunks) <= 2 * (1 << 20)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    prefix = "mr-v1-png/"
    in_zip = {
        n.removeprefix(prefix): hashlib.sha256(archive.read(n)).hexdigest()
        for n in archive.namelist()
    }
    assert in_zip == tree_digest(tmp_path / "folder")


def test_nifti_writer_refuses_uneven_slices(loaded: Core) -> None:
    from export.writers import NotConvertibleError, to_volume

    slices = [
        make_instance(SPEC, patient=0, study=1, series=0, instance_number=n) for n in (1, 2, 3)
    ]
    slices[2].ImagePositionPatient = [0, 0, -100]
    with pytest.raises(NotConvertibleError, match="uneven slice spacing"):
        to_volume(slices)
    slices[2].ImagePositionPatient = slices[1].ImagePositionPatient
    with pytest.raises(NotConvertibleError, match="same position"):
        to_volume(slices)
    assert NiftiWriter.per_instance is False


def test_a_missing_blob_stops_the_export_and_a_damaged_one_skips_its_series(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("t2", {"filters": {"modalities": ["MR"], "sequences": ["T1"]}}, actor="t")
    cohorts.freeze("t2", actor="t")
    frozen = cohorts.frozen("t2")
    first, second = (exporter.stored_instances(s)[0] for s in frozen.series[:2])
    loaded.blobs.path_of(first.blob_key).write_bytes(b"DICM? no: damaged on disk")
    summary = exporter.to_folder("t2", "nifti", tmp_path / "nifti", actor="t")
    assert summary.skipped == (
        (
            frozen.series[0].series_uid,
            f"instance {first.pinned.sop_instance_uid} cannot be read (InvalidDicomError)",
        ),
    )
    loaded.blobs.remove(second.blob_key)
    with pytest.raises(ExportError, match="missing from the blob store"):
        exporter.to_folder("t2", "dicom", tmp_path / "dicom", actor="t")


def test_the_cli_stops_on_a_full_disk_with_one_line_and_resumes(
    loaded: Core, cohorts: Cohorts, tiny_filesystem: Path
) -> None:
    from typer.testing import CliRunner

    from node.cli import app

    cohorts.define("all", {}, actor="t")
    cohorts.freeze("all", actor="t")
    where = ["--data-dir", str(loaded.settings.data_dir)]
    where += ["--database-url", str(loaded.settings.database_url)]
    out = tiny_filesystem / "export"
    command = ["export", "all", "--format", "png", "--out", str(out), *where]
    runner = CliRunner()
    full = runner.invoke(app, command)
    assert full.exit_code == 1
    assert full.stderr.strip().splitlines()[-1].startswith("Error: the disk holding")
    assert "run the same export again" in full.stderr
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_filesystem)], check=True)
    resumed = runner.invoke(app, command)
    assert resumed.exit_code == 0, resumed.stderr
    assert "series kept from before" in resumed.stdout
    assert len(read_csv(out / "manifest_files.csv")) == 80


def test_cli_show_gives_a_definition_that_define_file_takes_back(
    loaded: Core, cohorts: Cohorts, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from node.cli import app

    where = ["--data-dir", str(loaded.settings.data_dir)]
    where += ["--database-url", str(loaded.settings.database_url)]
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "cohort",
            "define",
            "old",
            "--sex",
            "f",
            "--age-min",
            "30",
            "--study-date-from",
            "2020-01-01",
            "--slice-thickness-max",
            "5",
            *where,
        ],
    )
    assert made.exit_code == 0, made.stderr
    shown = runner.invoke(app, ["cohort", "show", "old", *where])
    (tmp_path / "def.json").write_text(shown.stdout)
    again = runner.invoke(
        app,
        [
            "cohort",
            "define",
            "new",
            "--file",
            str(tmp_path / "def.json"),
            "--modality",
            "CT",
            *where,
        ],
    )
    assert again.exit_code == 0, again.stderr
    old, new = cohorts.get("old").definition, cohorts.get("new").definition
    assert old.filters.sexes == ["F"] and old.filters.age_min == 30
    assert new.filters.model_copy(update={"modalities": []}) == old.filters
    assert new.filters.modalities == ["CT"]
    bad_date = runner.invoke(
        app, ["cohort", "define", "x", "--study-date-to", "31/12/2020", *where]
    )
    assert bad_date.exit_code == 1 and "is not a date like 2024-01-31" in bad_date.stderr


def test_png_leaves_out_an_unreadable_instance_and_exports_the_rest(
    loaded: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define("t1", {"filters": {"sequences": ["T1"]}}, actor="t")
    cohorts.freeze("t1", actor="t")
    series = cohorts.frozen("t1").series[0]
    damaged = exporter.stored_instances(series)[1]
    loaded.blobs.path_of(damaged.blob_key).write_bytes(b"not DICOM any more")
    summary = exporter.to_folder("t1", "png", tmp_path / "out", actor="t")
    uid = damaged.pinned.sop_instance_uid
    assert summary.partial == (
        (series.series_uid, f"instance {uid} cannot be read (InvalidDicomError)"),
    )
    rows = {r["series_uid"]: r for r in read_csv(tmp_path / "out" / "manifest_series.csv")}
    assert (rows[series.series_uid]["status"], rows[series.series_uid]["files"]) == ("partial", "2")
    assert {r["status"] for r in rows.values()} == {"exported", "partial"}
    files = read_csv(tmp_path / "out" / "manifest_files.csv")
    assert len(files) == 8 * 3 - 1 and uid not in {r["sop_instance_uid"] for r in files}


def test_series_in_parts_give_the_same_export(
    cohorts: Cohorts, exporter: Exporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.service

    cohorts.define("all", {}, actor="t")
    cohorts.freeze("all", actor="t")
    exporter.to_folder("all", "png", tmp_path / "whole", actor="t")
    monkeypatch.setattr(export.service, "PART_SIZE", 1)
    calls: list[int] = []
    exporter.to_folder("all", "png", tmp_path / "parts", actor="t", progress=calls.append)
    assert calls == [1] * 80
    assert tree_digest(tmp_path / "whole") == tree_digest(tmp_path / "parts")


# ------------------------------------------------------------------------------- labels

NEGATIVE = "Impression: No pulmonary nodules. The lungs are clear."
MALIGNANT = (
    "Impression: Spiculated mass in the right upper lobe, consistent with primary lung cancer."
)
MALIGNANT_PATIENTS = (1, 4, 6)


@pytest.fixture
def labelled(loaded: Core, synthetic: SyntheticDataset, tmp_path: Path) -> Core:
    """A radiology report for each patient's CT study, imported through labeling's intake:
    lung cancer for three patients, clear lungs for the other five."""
    for index, phi in enumerate(synthetic.patients):
        study_date = dcmread(tmp_path / "synthetic" / str(index) / "0" / "0" / "1.dcm").StudyDate
        result = loaded.report_intake.accept(
            IncomingReport(
                report_type="radiology",
                patient_id=phi.patient_id,
                patient_names=(phi.patient_name,),
                accession_number=phi.accession_numbers[0],
                exam_date=date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:])),
                modality="CT",
                impression=MALIGNANT if index in MALIGNANT_PATIENTS else NEGATIVE,
            ),
            "file",
        )
        assert [method for _, method, _ in result.links] == ["accession"]
    return loaded


def test_label_filters_on_class_confidence_and_review(labelled: Core, cohorts: Cohorts) -> None:
    def series(labels: dict[str, object]) -> Counter[str]:
        rows = cohorts.select(cohorts.parse({"filters": {"labels": [labels]}}))
        assert all(row.modality == "CT" for row in rows)  # MR studies have no report
        return Counter(row.group("label:lung_nodule") or "" for row in rows)

    assert series({"task": "lung_nodule"}) == {"0": 5, "1": 3}
    assert series({"task": "lung_nodule", "classes": ["1"]}) == {"1": 3}
    # clear lungs 0.95 x 0.7, cancer 0.76 x 0.7 (the link: the report's issuer of patient ID
    # differs from the images')
    assert series({"task": "lung_nodule", "min_confidence": 0.6}) == {"0": 5}
    assert series({"task": "lung_nodule", "reviewed_only": True}) == {}
    with labelled.db.write() as session:
        rows = session.scalars(select(Label).where(Label.task == "lung_nodule")).all()
        negative = next(row for row in rows if row.value == 0)
        apply_review(negative, reviewer="Dr. Review", value=1, note="nodule on the prior")
        positive = next(row for row in rows if row.value == 1)
        apply_review(positive, reviewer="Dr. Review", value=None, note=None)
    assert series({"task": "lung_nodule", "reviewed_only": True}) == {"1": 2}
    assert series({"task": "lung_nodule"}) == {"0": 4, "1": 4}  # the override is in force


def test_labels_balance_split_and_reach_the_manifest(
    labelled: Core, cohorts: Cohorts, exporter: Exporter, tmp_path: Path
) -> None:
    cohorts.define(
        "lung",
        {
            "filters": {"labels": [{"task": "lung_nodule", "classes": ["0", "1"]}]},
            "balance": {"by": "label:lung_nodule"},
            "split": {"fractions": {"train": 0.5, "test": 0.5}},
            "seed": 1,
        },
        actor="t",
    )
    preview = cohorts.preview("lung")
    assert preview["classes"]["lung_nodule"] == {"0": 3, "1": 3}
    assert {name: entry["classes"]["lung_nodule"] for name, entry in preview["splits"].items()} == {
        "train": {"0": 2, "1": 2},
        "test": {"0": 1, "1": 1},
    }
    cohorts.freeze("lung", actor="t")
    out = tmp_path / "out"
    exporter.to_folder("lung", "dicom", out, actor="t")
    rows = read_csv(out / "manifest_series.csv")
    assert list(rows[0])[:5] == ["case_id", "sex", "age", "label", "label_meaning"]
    assert Counter(r["label"] for r in rows) == {"0": 3, "1": 3}
    meanings = {r["label"]: r["label_meaning"] for r in rows}
    assert meanings["1"].startswith("malignant: lung cancer")
    assert meanings["0"].startswith("the lungs are addressed and nothing malignant")
    for row in rows:
        assert row["lung_nodule"] == row["label"]
        expected = '"lung cancer"' if row["label"] == "1" else '"lungs are clear"'
        assert row["lung_nodule_evidence"].startswith(expected)
        assert "report " in row["lung_nodule_evidence"]
        assert row["lung_nodule_reviewed"] == "false"
        assert float(row["lung_nodule_confidence"]) > 0.5
        assert row["pancreatic_cancer"] == "-1"  # every task of the schema has its columns
    patients: dict[str, set[str]] = {}
    for row in rows:
        patients.setdefault(row["case_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in patients.values())
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["primary_task"] == "lung_nodule"
    assert set(dataset["label_schema"]["lung_nodule"]["classes"]) == {"1", "0", "2", "-1"}
    files = read_csv(out / "manifest_files.csv")
    assert {r["label"] for r in files} == {"0", "1"}

    # a later review does not change the frozen cohort: its export stays byte-identical
    with labelled.db.write() as session:
        for label in session.scalars(select(Label).where(Label.task == "lung_nodule")):
            apply_review(label, reviewer="Dr. Late", value=2, note=None)
    exporter.to_folder("lung", "dicom", tmp_path / "again", actor="t")
    assert tree_digest(out) == tree_digest(tmp_path / "again")
