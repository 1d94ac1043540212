"""Turn a (de-identified) data set into the values the catalog indexes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from catalog import normalize
from catalog.dicomjson import raw_values

_DATE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_N = TypeVar("_N", int, float)
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")


@dataclass(frozen=True)
class PatientAttrs:
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None


@dataclass(frozen=True)
class StudyAttrs:
    study_instance_uid: str
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    issuer_of_accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    patient_age: str | None
    patient_size: float | None
    patient_weight: float | None
    institution_name: str | None
    timezone_offset_from_utc: str | None


@dataclass(frozen=True)
class SeriesAttrs:
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    series_date: str | None
    series_time: str | None
    body_part_examined: str | None
    protocol_name: str | None
    performed_procedure_step_start_date: str | None
    performed_procedure_step_start_time: str | None
    manufacturer: str | None
    manufacturer_model_name: str | None
    station_name: str | None
    institution_name: str | None
    slice_thickness: float | None
    sequence_name: str | None


@dataclass(frozen=True)
class InstanceAttrs:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None
    content_date: str | None
    content_time: str | None
    deid_method: str | None = None
    deid_flag: str | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the catalog stores about one instance, taken from its data set."""

    patient: PatientAttrs
    study: StudyAttrs
    series: SeriesAttrs
    instance: InstanceAttrs
    metadata_json: str
    projects: tuple[str, ...] = ()
    """Projects the instance's study joins (the ``access.projects`` rules that matched)."""
    new_study_projects: tuple[str, ...] = ()
    """Projects the study joins only if this instance creates it: the default project, or an
    uploader's own (who must not gain a study of another project by sending into it)."""


def normalize_date(value: str | None) -> str | None:
    """``YYYYMMDD`` from a DA value (also ACR-NEMA ``YYYY.MM.DD``); ``None`` if unusable."""
    if not value:
        return None
    match = _DATE.match(value.strip())
    return "".join(match.groups()) if match else None


def normalize_time(value: str | None) -> str | None:
    """``HHMMSS[.ffffff]`` from a TM value (also ACR-NEMA ``HH:MM:SS``); ``None`` if unusable."""
    if not value:
        return None
    match = _TIME.match(value.strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return f"{hours}{minutes or '00'}{seconds or '00'}{fraction or ''}"


def text(ds: Dataset, keyword: str, limit: int | None = None) -> str | None:
    """The value of ``keyword`` as text (multiple values joined by ``\\``), ``None`` if empty."""
    values = raw_values(ds, keyword)
    if values is not None and all(isinstance(v, str) for v in values):
        result = "\\".join(values).strip()
    else:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        result = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
        result = result.strip()
    if not result:
        return None
    return result[:limit] if limit else result


def integer(ds: Dataset, keyword: str) -> int | None:
    """The first value of an IS/US/UL attribute as an int, ``None`` if absent or invalid."""
    return _first_number(ds, keyword, int)


def decimal(ds: Dataset, keyword: str) -> float | None:
    """The first value of a DS/FL/FD attribute as a float, ``None`` if absent or invalid."""
    return _first_number(ds, keyword, float)


def _first_number(ds: Dataset, keyword: str, kind: Callable[[Any], _N]) -> _N | None:
    try:
        values = raw_values(ds, keyword)
        if values is not None:
            value = values[0] if values else None
        else:
            value = ds.get(keyword)
            if isinstance(value, MultiValue):
                value = value[0] if value else None
        return None if value is None or value == "" else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def extract(ds: Dataset, metadata_json: str) -> InstanceRecord:
    """Read the indexed attributes of ``ds`` (the data set as it is stored)."""
    return InstanceRecord(
        patient=PatientAttrs(
            patient_id=text(ds, "PatientID", 64) or "",
            issuer_of_patient_id=text(ds, "IssuerOfPatientID", 64) or "",
            patient_name=text(ds, "PatientName", 1024),
            patient_birth_date=normalize_date(text(ds, "PatientBirthDate")),
            patient_sex=normalize.sex(text(ds, "PatientSex", 16)),
        ),
        study=StudyAttrs(
            study_instance_uid=str(ds.StudyInstanceUID),
            study_date=normalize_date(text(ds, "StudyDate")),
            study_time=normalize_time(text(ds, "StudyTime")),
            accession_number=text(ds, "AccessionNumber", 64),
            issuer_of_accession_number=_issuer_of_accession(ds),
            study_id=text(ds, "StudyID", 64),
            study_description=text(ds, "StudyDescription", 1024),
            referring_physician_name=text(ds, "ReferringPhysicianName", 1024),
            patient_age=text(ds, "PatientAge", 4),
            patient_size=decimal(ds, "PatientSize"),
            patient_weight=decimal(ds, "PatientWeight"),
            institution_name=text(ds, "InstitutionName", 1024),
            timezone_offset_from_utc=text(ds, "TimezoneOffsetFromUTC", 5),
        ),
        series=SeriesAttrs(
            series_instance_uid=str(ds.SeriesInstanceUID),
            modality=text(ds, "Modality", 16),
            series_number=integer(ds, "SeriesNumber"),
            series_description=text(ds, "SeriesDescription", 1024),
            series_date=normalize_date(text(ds, "SeriesDate")),
            series_time=normalize_time(text(ds, "SeriesTime")),
            body_part_examined=text(ds, "BodyPartExamined", 64),
            protocol_name=text(ds, "ProtocolName", 1024),
            performed_procedure_step_start_date=normalize_date(
                text(ds, "PerformedProcedureStepStartDate")
            ),
            performed_procedure_step_start_time=normalize_time(
                text(ds, "PerformedProcedureStepStartTime")
            ),
            manufacturer=text(ds, "Manufacturer", 1024),
            manufacturer_model_name=text(ds, "ManufacturerModelName", 1024),
            station_name=text(ds, "StationName", 64),
            institution_name=text(ds, "InstitutionName", 1024),
            slice_thickness=decimal(ds, "SliceThickness"),
            sequence_name=text(ds, "SequenceName", 64),
        ),
        instance=InstanceAttrs(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            instance_number=integer(ds, "InstanceNumber"),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            rows=integer(ds, "Rows"),
            columns=integer(ds, "Columns"),
            bits_allocated=integer(ds, "BitsAllocated"),
            number_of_frames=integer(ds, "NumberOfFrames"),
            content_date=normalize_date(text(ds, "ContentDate")),
            content_time=normalize_time(text(ds, "ContentTime")),
        ),
        metadata_json=metadata_json,
    )


def _issuer_of_accession(ds: Dataset) -> str | None:
    items = ds.get("IssuerOfAccessionNumberSequence")
    if not items:
        return None
    return text(items[0], "LocalNamespaceEntityID", 64)
