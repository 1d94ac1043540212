"""What a format writer gets (a frozen series and its stored instances) and gives back."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset

from export.cohorts import FrozenInstance, FrozenSeries
from export.errors import ExportError
from storage import BlobNotFoundError, BlobStore

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class StoredInstance:
    """A pinned instance and the blob holding it now (checked against the freeze's hash)."""

    pinned: FrozenInstance
    blob_key: str


@dataclass(frozen=True)
class BlobCopy:
    """A file that is a stored blob, copied as it is."""

    key: str


@dataclass(frozen=True)
class OutputFile:
    """One file of an export: its path (relative, POSIX), content, hash and manifest values."""

    path: str
    content: bytes | BlobCopy
    sha256: str
    size: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of_bytes(cls, path: str, data: bytes, meta: Mapping[str, Any]) -> OutputFile:
        return cls(path, data, hashlib.sha256(data).hexdigest(), len(data), meta)

    def written(self) -> OutputFile:
        """The record of the file once written: everything but its content."""
        return replace(self, content=b"")


@dataclass(frozen=True)
class SeriesResult:
    """The files of one series (or of a part of it), or why it was skipped.

    ``skipped``: the whole series could not be converted; ``problems``: instances that could
    not, while the others were (PNG). Either way the export goes on.
    """

    files: tuple[OutputFile, ...] = ()
    skipped: str = ""
    problems: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.skipped or (self.problems and not self.files):
            return "skipped"
        return "partial" if self.problems else "exported"

    @property
    def reason(self) -> str:
        return self.skipped or "; ".join(self.problems)

    def written(self) -> SeriesResult:
        """The record of the result once its files are written: no content kept."""
        return replace(self, files=tuple(f.written() for f in self.files))

    @classmethod
    def merge(cls, parts: Sequence[SeriesResult]) -> SeriesResult:
        """One series' result from the results of its parts (files already written)."""
        skipped = next((p.skipped for p in parts if p.skipped), "")
        if skipped:
            return cls(skipped=skipped)
        return cls(
            files=tuple(f for p in parts for f in p.written().files),
            problems=tuple(problem for p in parts for problem in p.problems),
            meta=next((p.meta for p in reversed(parts) if p.meta), {}),
        )


class Writer(Protocol):
    """Turns the instances of a series into files of one format."""

    name: str
    per_instance: bool
    """Whether files map to instances (a per-instance manifest is written)."""

    def plan(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> list[str]:
        """The paths ``write`` produces for this series (so a resumed export can skip it)."""
        ...

    def write(self, series: FrozenSeries, instances: Sequence[StoredInstance]) -> SeriesResult:
        """The series' files, or a :class:`SeriesResult` saying why it cannot be converted."""
        ...


def safe_component(value: str) -> str:
    """``value`` as one path component: kept if safe, else cleaned and suffixed by a hash."""
    if _SAFE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value).strip("._")[:48] or "x"
    return f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def series_folder(series: FrozenSeries) -> str:
    """``data/<pseudo patient>/<study UID>/<series UID>``."""
    return "/".join(
        (
            "data",
            *(safe_component(v) for v in (series.patient_id, series.study_uid, series.series_uid)),
        )
    )


class UnreadableInstanceError(ValueError):
    """A stored instance cannot be parsed; its series is skipped with this reason."""


def read_instance(blobs: BlobStore, instance: StoredInstance) -> Dataset:
    """Parse a stored instance (a missing blob stops the export, a bad one its series)."""
    try:
        with blobs.open(instance.blob_key) as stream:
            data = stream.read()
    except BlobNotFoundError:
        raise ExportError(
            f"the stored file of instance {instance.pinned.sop_instance_uid} is missing from "
            "the blob store (pacsnode verify lists such instances); the export stopped"
        ) from None
    try:
        return dcmread(BytesIO(data))
    except Exception as exc:  # pydicom raises many kinds; its messages can quote values
        raise UnreadableInstanceError(
            f"instance {instance.pinned.sop_instance_uid} cannot be read ({type(exc).__name__})"
        ) from None
