"""DICOM export: the stored (de-identified) files as they are, in a patient/study/series tree."""

from __future__ import annotations

from collections.abc import Sequence

from export.cohorts import FrozenSeries
from export.writers.base import BlobCopy, OutputFile, SeriesResult, StoredInstance, series_folder


class DicomWriter:
    name = "dicom"
    per_instance = True

    def plan(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> list[str]:
        folder = series_folder(series)
        return [f"{folder}/{i.pinned.sop_instance_uid}.dcm" for i in instances]

    def write(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> SeriesResult:
        paths = self.plan(series, instances)
        return SeriesResult(
            files=tuple(
                OutputFile(
                    path=path,
                    content=BlobCopy(instance.blob_key),
                    sha256=instance.pinned.sha256,
                    size=instance.pinned.size,
                    meta={
                        "sop_instance_uid": instance.pinned.sop_instance_uid,
                        "instance_number": instance.pinned.instance_number,
                        "frame": None,
                    },
                )
                for path, instance in zip(paths, instances, strict=True)
            )
        )
