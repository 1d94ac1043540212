"""Reports and labels: intake (HL7 MLLP, CSV/XLSX, REST), text de-identification, linking
to studies, negation-aware label extraction, review and evaluation (docs/labeling.md)."""

from labeling.extract import EmptyReportError, Extractor, TaskLabel
from labeling.intake import (
    IncomingReport,
    IntakeResult,
    ReportIntake,
    ReportRejectedError,
    ReportStoreError,
)
from labeling.mllp import MllpServer
from labeling.tasks import TaskFileError, TaskSet, load_tasks

__all__ = [
    "EmptyReportError",
    "Extractor",
    "IncomingReport",
    "IntakeResult",
    "MllpServer",
    "ReportIntake",
    "ReportRejectedError",
    "ReportStoreError",
    "TaskFileError",
    "TaskLabel",
    "TaskSet",
    "load_tasks",
]
