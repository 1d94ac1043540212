"""Research export: cohorts as saved, versioned queries; frozen, balanced, split by patient;
exported as DICOM, NIfTI or PNG with CSV/Parquet manifests, to a folder or as a zip stream."""

from export.cohorts import CohortInfo, Cohorts, FrozenCohort
from export.definition import Balance, CohortDefinition, Filters, LabelFilter, Split
from export.errors import (
    AlreadyFrozenError,
    CohortNameTakenError,
    CohortNotFoundError,
    DestinationError,
    DiskFullError,
    EmptyCohortError,
    ExportError,
    FrozenDataChangedError,
    InvalidDefinitionError,
    NotFrozenError,
)
from export.labels import (
    CatalogLabels,
    LabelClass,
    LabelSource,
    LabelTask,
    NoLabels,
    StudyLabel,
)
from export.service import FORMATS, Exporter, ExportSummary, ZipDownload

__all__ = [
    "FORMATS",
    "AlreadyFrozenError",
    "Balance",
    "CatalogLabels",
    "CohortDefinition",
    "CohortInfo",
    "CohortNameTakenError",
    "CohortNotFoundError",
    "Cohorts",
    "DestinationError",
    "DiskFullError",
    "EmptyCohortError",
    "ExportError",
    "ExportSummary",
    "Exporter",
    "Filters",
    "FrozenCohort",
    "FrozenDataChangedError",
    "InvalidDefinitionError",
    "LabelClass",
    "LabelFilter",
    "LabelSource",
    "LabelTask",
    "NoLabels",
    "NotFrozenError",
    "Split",
    "StudyLabel",
    "ZipDownload",
]
