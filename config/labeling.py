"""Settings of report intake, linking and label extraction (section ``[labeling]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, field_validator


class ImportColumns(BaseModel):
    """Header names accepted for each field of a CSV/XLSX report export (case-insensitive)."""

    report_id: list[str] = Field(
        default_factory=lambda: ["report_id", "report_no", "报告编号", "报告号"],
        description="Report identifier in the source system (optional; de-identified).",
    )
    accession: list[str] = Field(
        default_factory=lambda: ["accession", "accession_number", "检查号", "影像号", "检查编号"],
        description="Accession number of the exam.",
    )
    patient_id: list[str] = Field(
        default_factory=lambda: ["patient_id", "patientid", "病人id", "患者id", "病历号", "住院号"],
        description="Patient ID (required).",
    )
    patient_name: list[str] = Field(
        default_factory=lambda: ["patient_name", "name", "姓名", "患者姓名"],
        description="Patient name: only used to remove it from the text; never stored.",
    )
    exam_date: list[str] = Field(
        default_factory=lambda: ["exam_date", "study_date", "report_date", "检查日期", "报告日期"],
        description="Exam (or specimen) date.",
    )
    modality: list[str] = Field(
        default_factory=lambda: ["modality", "检查类型", "设备类型"],
        description="Modality (CT, MR, MG, US, ...).",
    )
    report_type: list[str] = Field(
        default_factory=lambda: ["report_type", "type", "报告类型"],
        description="radiology or pathology (also 影像/放射, 病理).",
    )
    findings: list[str] = Field(
        default_factory=lambda: ["findings", "description", "检查所见", "影像所见", "镜下所见"],
        description="Findings text.",
    )
    impression: list[str] = Field(
        default_factory=lambda: [
            "impression",
            "conclusion",
            "diagnosis",
            "诊断意见",
            "印象",
            "结论",
            "病理诊断",
        ],
        description="Impression / conclusion / diagnosis text.",
    )


class LabelingSettings(BaseModel):
    """Report intake (HL7 MLLP, files, REST), linking windows and label tasks."""

    mllp_enabled: bool = Field(
        default=True, description="Run the HL7 v2 MLLP listener in the node."
    )
    mllp_host: str = Field(
        default="127.0.0.1",
        description=(
            "Address the MLLP listener binds to. Another than loopback (the RIS is remote: "
            "e.g. 0.0.0.0) needs mllp_allowed_sources."
        ),
    )
    mllp_port: int = Field(
        default=2575, ge=0, le=65535, description="MLLP port (0: any free port)."
    )
    mllp_max_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest HL7 message accepted over MLLP, in bytes; a larger one is read to its end "
            "without being kept and answered with one AR."
        ),
    )
    max_report_chars: int = Field(
        default=500_000,
        ge=1,
        description=(
            "Longest report text (findings and impression together) accepted through any "
            "door, in characters; a longer report is refused (AE over HL7, 422 over REST)."
        ),
    )
    mllp_allowed_sources: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description=(
            "Addresses or networks (e.g. 10.20.0.0/16) the RIS may send reports from; "
            "connections from elsewhere are closed unanswered. Empty: any address."
        ),
    )
    tasks_file: Path | None = Field(
        default=None,
        description="Label task definitions (TOML); default: the file shipped in labeling/data.",
    )
    link_window_days: int = Field(
        default=3,
        ge=0,
        description="Days between a report's exam date and a study date to link them by patient.",
    )
    pathology_window_days: int = Field(
        default=90,
        ge=0,
        description="Days a pathology report may follow the imaging study it is linked to.",
    )
    issuer_of_patient_id: str = Field(
        default="",
        description=(
            "Issuer used to pseudonymise report patient IDs; must be the images' Issuer of "
            "Patient ID for reports and studies to meet."
        ),
    )
    issuer_of_accession_number: str = Field(
        default="", description="Issuer used to pseudonymise report accession numbers."
    )
    default_report_type: Literal["radiology", "pathology"] = Field(
        default="radiology", description="Report type of file rows that do not say."
    )
    file_encodings: list[str] = Field(
        default_factory=lambda: ["utf-8"],
        description="Encodings tried, in order, for CSV files (e.g. add gb18030).",
    )
    columns: ImportColumns = Field(default_factory=ImportColumns)

    @field_validator("file_encodings")
    @classmethod
    def _known_encodings(cls, values: list[str]) -> list[str]:
        import codecs

        for name in values:
            try:
                codecs.lookup(name)
            except LookupError:
                raise ValueError(f"unknown encoding {name!r} in file_encodings") from None
        if not values:
            raise ValueError("file_encodings needs at least one encoding")
        return values
