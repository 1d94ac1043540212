"""Reading RIS / pathology report exports (CSV, XLSX) into :class:`IncomingReport` rows.

Every file is read and checked whole before anything is stored: a file whose columns or
encoding are wrong is refused with a message naming the problem; a bad row (empty report,
unreadable date, unknown report type) is refused with its row number; the other rows go on.
Several exports are merged and reports that appear more than once are dropped. Merged cells
in an XLSX sheet (a patient ID spanning that patient's rows) take the merged range's value.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.labeling import ImportColumns, LabelingSettings
from labeling.intake import IncomingReport

_REPORT_TYPES = {
    "radiology": "radiology",
    "rad": "radiology",
    "imaging": "radiology",
    "影像": "radiology",
    "放射": "radiology",
    "影像报告": "radiology",
    "pathology": "pathology",
    "path": "pathology",
    "病理": "pathology",
    "病理报告": "pathology",
}
_DATE = re.compile(r"^\s*(\d{4})[-/.年]?(\d{1,2})[-/.月]?(\d{1,2})日?(?:[ T].*)?$")


class ImportFileError(ValueError):
    """A whole file cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class FileRow:
    """One row of an export: a report to accept, or the reason it was refused."""

    where: str
    report: IncomingReport | None = None
    error: str = ""


@dataclass(frozen=True)
class ReadResult:
    rows: list[FileRow]
    duplicates: int
    merged_ranges: int


def read_exports(paths: Sequence[Path], settings: LabelingSettings) -> tuple[ReadResult, list[str]]:
    """Read every export; the merged rows (duplicates dropped) and the files refused."""
    rows: list[FileRow] = []
    refused: list[str] = []
    merged = 0
    for path in paths:
        try:
            table, merged_here = _read_table(path, settings)
            rows.extend(_rows(path, table, settings))
            merged += merged_here
        except ImportFileError as exc:
            refused.append(str(exc))
    unique: list[FileRow] = []
    seen: set[tuple[Any, ...]] = set()
    duplicates = 0
    for row in rows:
        if row.report is not None:
            key = _identity(row.report)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
        unique.append(row)
    return ReadResult(unique, duplicates, merged), refused


def _identity(report: IncomingReport) -> tuple[Any, ...]:
    squash = re.compile(r"\s+")
    return (
        report.patient_id,
        report.accession_number,
        report.report_type,
        report.exam_date,
        squash.sub(" ", report.findings).strip(),
        squash.sub(" ", report.impression).strip(),
    )


def _read_table(path: Path, settings: LabelingSettings) -> tuple[pd.DataFrame, int]:
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return _read_csv(path, settings.file_encodings), 0
    if suffix in (".xlsx", ".xlsm"):
        return _read_xlsx(path)
    raise ImportFileError(f"{path}: not a CSV or XLSX file (use .csv, .txt, .xlsx or .xlsm)")


def _read_csv(path: Path, encodings: Iterable[str]) -> pd.DataFrame:
    raw = path.read_bytes()
    tried = []
    for encoding in encodings:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError as exc:
            tried.append(f"{encoding} (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
    else:
        raise ImportFileError(
            f"{path}: unknown encoding, not {', '.join(tried)}; convert it to UTF-8 or add "
            "its encoding to labeling.file_encodings (e.g. gb18030)"
        )
    try:
        return pd.read_csv(
            io.StringIO(text.removeprefix("\ufeff")),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportFileError(f"{path}: not a readable CSV table ({first_line})") from None


def _read_xlsx(path: Path) -> tuple[pd.DataFrame, int]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(path, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise ImportFileError(
            f"{path}: not a readable XLSX workbook ({type(exc).__name__})"
        ) from None
    sheet = workbook.active
    if sheet is None:
        raise ImportFileError(f"{path}: the workbook has no sheet")
    ranges = list(sheet.merged_cells.ranges)
    for merged in ranges:
        value = sheet.cell(merged.min_row, merged.min_col).value
        sheet.unmerge_cells(str(merged))
        for row in range(merged.min_row, merged.max_row + 1):
            for column in range(merged.min_col, merged.max_col + 1):
                sheet.cell(row, column).value = value
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    values = [row for row in values if any(v not in (None, "") for v in row)]
    if not values:
        raise ImportFileError(f"{path}: the sheet is empty")
    header = ["" if v is None else str(v) for v in values[0]]
    names = [h.strip().lower() for h in header if h.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ImportFileError(
            f"{path}: column(s) {', '.join(repeated)} appear more than once (merged header cells?)"
        )
    body = [["" if v is None else v for v in row] for row in values[1:]]
    return pd.DataFrame(body, columns=header), len(ranges)


def _columns(path: Path, table: pd.DataFrame, names: ImportColumns) -> dict[str, str]:
    present = {str(c).strip().lower(): str(c) for c in table.columns}
    found: dict[str, str] = {}
    for field, aliases in names.model_dump().items():
        for alias in aliases:
            if alias.strip().lower() in present:
                found[field] = present[alias.strip().lower()]
                break
    problems = []
    if "patient_id" not in found:
        problems.append(f"patient ID (one of: {', '.join(names.patient_id)})")
    if "findings" not in found and "impression" not in found:
        problems.append(
            f"report text (findings: {', '.join(names.findings)}; "
            f"or impression: {', '.join(names.impression)})"
        )
    if problems:
        columns = ", ".join(str(c) for c in table.columns) or "none"
        raise ImportFileError(
            f"{path}: missing column(s) for {' and '.join(problems)}; the file has: {columns}. "
            "Rename the columns or map them in [labeling.columns]"
        )
    return found


def _rows(path: Path, table: pd.DataFrame, settings: LabelingSettings) -> list[FileRow]:
    columns = _columns(path, table, settings.columns)
    rows = []
    for index, record in enumerate(table.to_dict("records"), start=2):
        where = f"{path.name} row {index}"
        values = {field: record[column] for field, column in columns.items()}
        try:
            rows.append(FileRow(where, _incoming(values, settings)))
        except ValueError as exc:
            rows.append(FileRow(where, error=str(exc)))
    return rows


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _incoming(values: dict[str, Any], settings: LabelingSettings) -> IncomingReport:
    findings = _text(values.get("findings"))
    impression = _text(values.get("impression"))
    if not findings and not impression:
        raise ValueError("empty report (no findings and no impression)")
    patient_id = _text(values.get("patient_id"))
    if not patient_id:
        raise ValueError("no patient ID")
    kind = _text(values.get("report_type")).lower() or settings.default_report_type
    report_type = _REPORT_TYPES.get(kind)
    if report_type is None:
        raise ValueError("report type must be radiology or pathology (or 影像, 病理)")
    name = _text(values.get("patient_name"))
    report_id = _text(values.get("report_id"))
    return IncomingReport(
        report_type=report_type,
        patient_id=patient_id,
        findings=findings,
        impression=impression,
        accession_number=_text(values.get("accession")),
        patient_names=(name,) if name else (),
        exam_date=_date(values.get("exam_date")),
        modality=_text(values.get("modality")),
        other_identifiers=(report_id,) if report_id else (),
    )


def _date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = _text(value)
    if not text:
        return None
    match = _DATE.match(text)
    if match:
        try:
            return date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            pass
    raise ValueError("exam date is not a date (use YYYY-MM-DD)")
