"""NIfTI export: one volume per series, placed in space by its DICOM geometry (nibabel).

The affine maps voxel (i, j, k) = (column, row, slice) to RAS+ millimetres, as NIfTI wants:
DICOM patient coordinates are LPS+, so the first two rows of the LPS affine change sign.

    x_LPS = IPP_0 + i * PixelSpacing[1] * F_row + j * PixelSpacing[0] * F_col + k * step

where F_row / F_col are the row and column direction cosines of ImageOrientationPatient
(PS3.3 C.7.6.2.1.1) and ``step`` is the vector between neighbouring slices' positions.
A series that cannot be one regular volume is skipped with the reason.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from export.cohorts import FrozenSeries
from export.writers.base import (
    OutputFile,
    SeriesResult,
    StoredInstance,
    UnreadableInstanceError,
    read_instance,
    series_folder,
)
from storage import BlobStore

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 0.01  # relative deviation of one slice gap from the median


class NotConvertibleError(ValueError):
    """Why a series cannot become one volume (the message goes into the manifest)."""


class NiftiWriter:
    name = "nifti"
    per_instance = False

    def __init__(self, blobs: BlobStore, *, compress: bool = True) -> None:
        self.blobs = blobs
        self.compress = compress

    def _path(self, series: FrozenSeries) -> str:
        return f"{series_folder(series)}.nii" + (".gz" if self.compress else "")

    def plan(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> list[str]:
        return [self._path(series)]

    def write(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> SeriesResult:
        try:
            datasets = [read_instance(self.blobs, i) for i in instances]
            volume, affine = to_volume(datasets)
        except (NotConvertibleError, UnreadableInstanceError) as exc:
            return SeriesResult(skipped=str(exc))
        image = nib.Nifti1Image(volume, affine)
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm")
        data = image.to_bytes()
        if self.compress:
            data = gzip.compress(data, compresslevel=1, mtime=0)
        zooms = [round(float(z), 6) for z in image.header.get_zooms()[:3]]
        meta: dict[str, Any] = {
            "shape": "x".join(str(n) for n in volume.shape),
            "voxel_mm": "x".join(f"{z:g}" for z in zooms),
        }
        return SeriesResult(files=(OutputFile.of_bytes(self._path(series), data, meta),), meta=meta)


def to_volume(datasets: Sequence[Dataset]) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """The voxel array (columns, rows, slices) and RAS affine of single-frame slices.

    Raises
    ------
    NotConvertibleError
        No geometry, mixed orientations or sizes, multi-frame, uneven or repeated slices,
        or pixel data that cannot be decoded.
    """
    if not datasets:
        raise NotConvertibleError("no instances")
    for ds in datasets:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise NotConvertibleError("multi-frame instances are not converted to NIfTI")
        missing = [
            k
            for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if k not in ds or len(ds[k].value or ()) == 0
        ]
        if missing:
            raise NotConvertibleError(f"no {'/'.join(missing)}: the slices have no geometry")
        if "PixelData" not in ds:
            raise NotConvertibleError("an instance has no pixel data")
    orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    spacing = [float(v) for v in datasets[0].PixelSpacing]
    for ds in datasets[1:]:
        if not np.allclose(
            [float(v) for v in ds.ImageOrientationPatient], orientation, atol=_ORIENTATION_TOLERANCE
        ):
            raise NotConvertibleError("slices have different orientations")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise NotConvertibleError("slices have different sizes")
        if not np.allclose([float(v) for v in ds.PixelSpacing], spacing):
            raise NotConvertibleError("slices have different pixel spacings")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    positions = [np.array([float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    order = sorted(range(len(datasets)), key=lambda i: float(positions[i] @ normal))
    ordered = [positions[i] for i in order]
    step = _slice_step(ordered, normal, datasets[0])

    lps = np.eye(4)
    lps[:3, 0] = row_cosine * spacing[1]
    lps[:3, 1] = column_cosine * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = ordered[0]
    affine = LPS_TO_RAS @ lps
    return _voxels([datasets[i] for i in order]), affine


def _slice_step(
    ordered: Sequence[NDArray[np.float64]], normal: NDArray[np.float64], first: Dataset
) -> NDArray[np.float64]:
    if len(ordered) == 1:
        gap = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return normal * gap
    steps = np.diff(np.array(ordered), axis=0)
    gaps = steps @ normal
    if np.any(np.abs(gaps) < 1e-3):
        raise NotConvertibleError(
            "two slices at the same position (several volumes in one series?)"
        )
    median = float(np.median(gaps))
    if np.any(np.abs(gaps - median) > _SPACING_TOLERANCE * abs(median) + 1e-3):
        raise NotConvertibleError(
            f"uneven slice spacing ({float(gaps.min()):.3g} to {float(gaps.max()):.3g} mm)"
        )
    mean_step: NDArray[np.float64] = (ordered[-1] - ordered[0]) / (len(ordered) - 1)
    return mean_step


def _voxels(datasets: Sequence[Dataset]) -> NDArray[Any]:
    """Rescaled values as (columns, rows, slices): int16 when they stay whole numbers in
    range, else float32."""
    try:
        stored = np.stack([ds.pixel_array for ds in datasets])  # (slices, rows, columns)
    except Exception as exc:  # pydicom raises many kinds for undecodable pixel data
        syntax = datasets[0].file_meta.get("TransferSyntaxUID", "unknown")
        raise NotConvertibleError(
            f"cannot decode the pixel data ({getattr(syntax, 'name', syntax)}: "
            f"{type(exc).__name__})"
        ) from None
    if stored.ndim != 3:
        raise NotConvertibleError("pixel data is not one grey-level image per slice")
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in datasets])
    intercepts = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets])
    whole = bool(np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)))
    if whole:
        values: NDArray[Any] = stored.astype(np.int32)
        if np.any(slopes != 1):
            values *= slopes.astype(np.int32)[:, None, None]
        if np.any(intercepts != 0):
            values += intercepts.astype(np.int32)[:, None, None]
        if values.min() >= np.iinfo(np.int16).min and values.max() <= np.iinfo(np.int16).max:
            values = values.astype(np.int16)
        else:
            values = values.astype(np.float32)
    else:
        values = (
            stored.astype(np.float32) * slopes.astype(np.float32)[:, None, None]
            + intercepts.astype(np.float32)[:, None, None]
        )
    # (slices, rows, columns) in C order is (columns, rows, slices) in Fortran order,
    # which is how NIfTI stores voxels: the transpose costs no copy
    return values.transpose(2, 1, 0)
