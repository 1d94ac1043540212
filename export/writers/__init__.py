"""Format writers: DICOM (the stored files), NIfTI (a volume per series), PNG (windowed)."""

from export.writers.base import (
    BlobCopy,
    OutputFile,
    SeriesResult,
    StoredInstance,
    Writer,
    safe_component,
    series_folder,
)
from export.writers.dicom import DicomWriter
from export.writers.nifti import NiftiWriter, NotConvertibleError, to_volume
from export.writers.png import PngWriter

__all__ = [
    "BlobCopy",
    "DicomWriter",
    "NiftiWriter",
    "NotConvertibleError",
    "OutputFile",
    "PngWriter",
    "SeriesResult",
    "StoredInstance",
    "Writer",
    "safe_component",
    "series_folder",
    "to_volume",
]
