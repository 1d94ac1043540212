"""PNG export: every frame as an 8-bit image, windowed as a viewer would show it.

The window is the instance's own (first WindowCenter/WindowWidth), else the configured one
for its modality (``export.png_windows``), else the configured percentiles of the image.
Values go through the modality LUT (Rescale Slope/Intercept) first, then the linear VOI
function of PS3.3 C.11.2.1.2; MONOCHROME1 is inverted; colour images are written as RGB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut

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

PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})


class PngWriter:
    name = "png"
    per_instance = True

    def __init__(
        self,
        blobs: BlobStore,
        *,
        windows: Mapping[str, Sequence[float]],
        percentiles: Sequence[float],
    ) -> None:
        self.blobs = blobs
        self.windows = {m.upper(): (float(w[0]), float(w[1])) for m, w in windows.items()}
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def plan(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> list[str]:
        return [path for instance in instances for path, _ in self._paths(series, instance)]

    def _paths(
        self, series: FrozenSeries, instance: StoredInstance
    ) -> list[tuple[str, int | None]]:
        folder, uid, frames = (
            series_folder(series),
            instance.pinned.sop_instance_uid,
            instance.pinned.frames,
        )
        if frames <= 1:
            return [(f"{folder}/{uid}.png", None)]
        return [(f"{folder}/{uid}_{n:04d}.png", n) for n in range(1, frames + 1)]

    def write(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> SeriesResult:
        """The PNGs of ``instances``; an instance that cannot be read or decoded is left out
        and named in ``problems``, the others are written."""
        files: list[OutputFile] = []
        problems: list[str] = []
        for instance in instances:
            uid = instance.pinned.sop_instance_uid
            try:
                ds = read_instance(self.blobs, instance)
            except UnreadableInstanceError as exc:
                problems.append(str(exc))
                continue
            if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
                problems.append(f"instance {uid}: no pixel data (an image is needed for PNG)")
                continue
            try:
                frames = _frames(ds)
            except Exception as exc:  # pydicom raises many kinds for undecodable pixel data
                syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
                problems.append(
                    f"instance {uid}: cannot decode the pixel data "
                    f"({getattr(syntax, 'name', syntax)}: {type(exc).__name__})"
                )
                continue
            paths = self._paths(series, instance)
            if len(paths) != len(frames):
                problems.append(f"instance {uid}: the number of frames differs from the catalog's")
                continue
            for (path, frame_number), frame in zip(paths, frames, strict=True):
                image, center, width = self._render(ds, frame)
                meta = {
                    "sop_instance_uid": uid,
                    "instance_number": instance.pinned.instance_number,
                    "frame": frame_number,
                    "window_center": center,
                    "window_width": width,
                }
                files.append(OutputFile.of_bytes(path, _encode(image), meta))
        return SeriesResult(files=tuple(files), problems=tuple(problems))

    def _render(
        self, ds: Dataset, frame: NDArray[Any]
    ) -> tuple[NDArray[np.uint8], float | None, float | None]:
        if frame.ndim == 3:  # colour: already RGB from pydicom
            return np.clip(frame, 0, 255).astype(np.uint8), None, None
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
        center, width = self._window(ds, values)
        # PS3.3 C.11.2.1.2.1, linear function
        scaled = ((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5) * 255.0
        image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            image = 255 - image
        return image, round(center, 4), round(width, 4)

    def _window(self, ds: Dataset, values: NDArray[np.float64]) -> tuple[float, float]:
        own = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
        if own[0] is not None and own[1] is not None and own[1] > 0:
            return own[0], own[1]
        configured = self.windows.get(str(ds.get("Modality", "")).upper())
        if configured is not None:
            return configured
        low, high = (float(v) for v in np.percentile(values, self.percentiles))
        width = max(high - low, 1.0)
        return low + width / 2.0, width


def _frames(ds: Dataset) -> list[NDArray[Any]]:
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return [pixels[i] for i in range(frames)]
    return [pixels]


def _first_number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, MultiValue) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _encode(image: NDArray[np.uint8]) -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
