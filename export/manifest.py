"""Manifests of an export: per series (and per file for DICOM/PNG) as CSV and Parquet, and
``dataset.json``.

The series manifest starts with the reference workflow's label format (case ID, sex, age,
label, label meaning) and goes on with the split, UIDs, acquisition, every label task with
its meaning and evidence, and the files written. Nothing in these files depends on when or
how often a frozen cohort is exported, so a re-export gives byte-identical manifests.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from export.cohorts import FrozenCohort, FrozenSeries
from export.writers.base import SeriesResult, series_folder

SERIES_CSV = "manifest_series.csv"
SERIES_PARQUET = "manifest_series.parquet"
FILES_CSV = "manifest_files.csv"
FILES_PARQUET = "manifest_files.parquet"
DATASET_JSON = "dataset.json"


ArrowType = Literal["string", "float64", "int64", "bool_"]
"""A column's Parquet type, by the name of its pyarrow factory: pyarrow (about 30 MB
resident) is imported only when a Parquet manifest is written, not by every node process."""


@dataclass(frozen=True)
class Column:
    name: str
    type: ArrowType
    description: str


def _text(name: str, description: str) -> Column:
    return Column(name, "string", description)


def primary_task(cohort: FrozenCohort) -> str | None:
    """The task whose class is the manifest's ``label``: the one the cohort balances or
    splits by, else its first label filter, else the only task there is."""
    definition = cohort.info.definition
    for grouping in (definition.split_by(), definition.balance.by if definition.balance else None):
        if grouping and grouping.startswith("label:"):
            return grouping.removeprefix("label:")
    if definition.filters.labels:
        return definition.filters.labels[0].task
    tasks = list(cohort.label_schema)
    return tasks[0] if len(tasks) == 1 else None


def series_columns(cohort: FrozenCohort, format_name: str) -> list[Column]:
    columns = [
        _text("case_id", "pseudonymous patient ID (the case)"),
        _text("sex", "patient sex as stored: M, F, O or empty"),
        Column("age", "float64", "age in years at the exam"),
    ]
    if primary_task(cohort):
        columns += [
            _text("label", f"class of task {primary_task(cohort)!r} (see dataset.json)"),
            _text("label_meaning", "what the class means"),
        ]
    columns += [
        _text("split", "train / validation / test (by patient), empty without a split"),
        _text("study_uid", "de-identified Study Instance UID"),
        _text("series_uid", "de-identified Series Instance UID"),
        _text("study_date", "study date as stored (YYYYMMDD; shifted if de-identification shifts)"),
        _text("modality", "DICOM Modality"),
        _text("sequence", "sequence or contrast phase family (export.sequences)"),
        _text("series_description", "Series Description as stored"),
        _text("body_part", "Body Part Examined"),
        _text("institution", "institution, when de-identification retains it"),
        Column("slice_thickness", "float64", "Slice Thickness in mm"),
        Column("instances", "int64", "instances of the series in the cohort"),
    ]
    for task in cohort.label_schema:
        columns += [
            _text(task, f"class of task {task!r}, empty when the study has no label"),
            _text(f"{task}_meaning", "what the class means"),
            Column(f"{task}_confidence", "float64", "confidence of the derived label (0-1)"),
            Column(f"{task}_reviewed", "bool_", "a person confirmed the label"),
            Column(f"{task}_overridden", "bool_", "a person changed the derived label"),
            _text(f"{task}_evidence", "the report phrase and rule the label came from"),
        ]
    columns += [
        _text("path", "the series' file (NIfTI) or folder (DICOM, PNG), relative"),
        Column("files", "int64", "files written for the series"),
        _text("status", "exported, partial (some instances left out) or skipped"),
        _text("skip_reason", "why the series, or some of its instances, were not converted"),
    ]
    if format_name == "nifti":
        columns += [
            _text("shape", "voxels: columns x rows x slices"),
            _text("voxel_mm", "voxel size in mm"),
        ]
    return columns


def file_columns(cohort: FrozenCohort, format_name: str) -> list[Column]:
    columns = [
        _text("case_id", "pseudonymous patient ID (the case)"),
        _text("split", "train / validation / test (by patient)"),
    ]
    if primary_task(cohort):
        columns.append(_text("label", f"class of task {primary_task(cohort)!r}"))
    columns += [
        _text("study_uid", "de-identified Study Instance UID"),
        _text("series_uid", "de-identified Series Instance UID"),
        _text("sop_instance_uid", "de-identified SOP Instance UID"),
        Column("instance_number", "int64", "Instance Number"),
        Column("frame", "int64", "frame number of a multi-frame instance, else empty"),
        _text("path", "file, relative to the export"),
        _text("sha256", "SHA-256 of the file"),
        Column("size", "int64", "bytes"),
    ]
    if format_name == "png":
        columns += [
            Column("window_center", "float64", "window center applied"),
            Column("window_width", "float64", "window width applied"),
        ]
    return columns


def series_row(
    cohort: FrozenCohort, series: FrozenSeries, result: SeriesResult, format_name: str
) -> dict[str, Any]:
    attributes = series.attributes
    labels: Mapping[str, Mapping[str, Any]] = attributes.get("labels", {})
    task = primary_task(cohort)
    row: dict[str, Any] = {
        "case_id": series.patient_id,
        "sex": attributes.get("sex"),
        "age": attributes.get("age"),
        "split": series.split,
        "study_uid": series.study_uid,
        "series_uid": series.series_uid,
        "study_date": attributes.get("study_date"),
        "modality": attributes.get("modality"),
        "sequence": attributes.get("sequence"),
        "series_description": attributes.get("series_description"),
        "body_part": attributes.get("body_part"),
        "institution": attributes.get("institution"),
        "slice_thickness": attributes.get("slice_thickness"),
        "instances": attributes.get("instances"),
    }
    if task:
        value = labels.get(task, {}).get("value")
        row["label"] = value
        row["label_meaning"] = _meaning(cohort, task, value)
    for name in cohort.label_schema:
        label = labels.get(name, {})
        row[name] = label.get("value")
        row[f"{name}_meaning"] = _meaning(cohort, name, label.get("value"))
        row[f"{name}_confidence"] = label.get("confidence")
        row[f"{name}_reviewed"] = label.get("reviewed")
        row[f"{name}_overridden"] = label.get("overridden")
        row[f"{name}_evidence"] = label.get("evidence")
    if format_name == "nifti":
        row["path"] = result.files[0].path if result.files else None
    else:
        row["path"] = series_folder(series)
    row["files"] = len(result.files)
    row["status"] = result.status
    row["skip_reason"] = result.reason or None
    row["shape"] = result.meta.get("shape")
    row["voxel_mm"] = result.meta.get("voxel_mm")
    return row


def file_rows(
    cohort: FrozenCohort, series: FrozenSeries, result: SeriesResult
) -> list[dict[str, Any]]:
    task = primary_task(cohort)
    label = series.attributes.get("labels", {}).get(task, {}).get("value") if task else None
    return [
        {
            "case_id": series.patient_id,
            "split": series.split,
            "label": label,
            "study_uid": series.study_uid,
            "series_uid": series.series_uid,
            "path": file.path,
            "sha256": file.sha256,
            "size": file.size,
            **file.meta,
        }
        for file in result.files
    ]


def to_csv(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    for row in rows:
        writer.writerow([_csv_value(row.get(c.name)) for c in columns])
    return buffer.getvalue().encode()


def to_parquet(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {c.name: getattr(pa, c.type)() for c in columns}
    schema = pa.schema(
        [pa.field(c.name, types[c.name], metadata={"description": c.description}) for c in columns]
    )
    table = pa.table(
        {c.name: pa.array([row.get(c.name) for row in rows], type=types[c.name]) for c in columns},
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def dataset_json(
    cohort: FrozenCohort,
    format_name: str,
    series_results: Sequence[tuple[FrozenSeries, SeriesResult]],
    columns: Mapping[str, Sequence[Column]],
) -> bytes:
    """What the export is: cohort, definition, label schema, de-identification, freeze hash."""
    info = cohort.info
    exported = [s for s, r in series_results if r.status != "skipped"]
    splits: dict[str, dict[str, int]] = {}
    for series in exported:
        entry = splits.setdefault(series.split or "none", {"patients": 0, "series": 0})
        entry["series"] += 1
    for name in splits:
        splits[name]["patients"] = len(
            {s.patient_id for s in exported if (s.split or "none") == name}
        )
    document = {
        "name": info.name,
        "version": info.version,
        "description": info.description,
        "format": format_name,
        "freeze": {
            "manifest_sha256": info.manifest_sha256,
            "frozen_at": info.frozen_at.isoformat() if info.frozen_at else None,
        },
        "definition": info.definition.model_dump(mode="json"),
        "label_schema": cohort.label_schema,
        "primary_task": primary_task(cohort),
        "deidentification": cohort.deidentification,
        "counts": {
            "patients": len({s.patient_id for s in cohort.series}),
            "studies": len({s.study_uid for s in cohort.series}),
            "series": len(cohort.series),
            "instances": cohort.instance_count,
            "series_exported": len(exported),
            "series_skipped": len(series_results) - len(exported),
            "files": sum(len(r.files) for _, r in series_results),
        },
        "splits": dict(sorted(splits.items())),
        "files": {
            name: {
                "columns": {c.name: c.description for c in cols},
            }
            for name, cols in columns.items()
        },
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def manifest_files(
    cohort: FrozenCohort,
    format_name: str,
    per_instance: bool,
    series_results: Sequence[tuple[FrozenSeries, SeriesResult]],
) -> list[tuple[str, bytes]]:
    """Every manifest file of the export, ``dataset.json`` last (it marks completion)."""
    s_columns = series_columns(cohort, format_name)
    s_rows = [series_row(cohort, s, r, format_name) for s, r in series_results]
    files = [
        (SERIES_CSV, to_csv(s_columns, s_rows)),
        (SERIES_PARQUET, to_parquet(s_columns, s_rows)),
    ]
    described: dict[str, Sequence[Column]] = {SERIES_CSV: s_columns}
    if per_instance:
        f_columns = file_columns(cohort, format_name)
        f_rows = [row for s, r in series_results for row in file_rows(cohort, s, r)]
        files += [
            (FILES_CSV, to_csv(f_columns, f_rows)),
            (FILES_PARQUET, to_parquet(f_columns, f_rows)),
        ]
        described[FILES_CSV] = f_columns
    files.append((DATASET_JSON, dataset_json(cohort, format_name, series_results, described)))
    return files


def _meaning(cohort: FrozenCohort, task: str, value: Any) -> str | None:
    if value is None:
        return None
    classes: Mapping[str, str] = cohort.label_schema.get(task, {}).get("classes", {})
    return classes.get(str(value))


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
