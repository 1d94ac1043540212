"""The identity of an instance's content, whoever wrote the file and however they encoded it.

The same instance reaches pacsnode through several doors in several encodings: a file's
meta (group 0002: Implementation Class UID, Source AE Title) is the writer's, dcmtk's
``storescu`` writes sequences with explicit lengths where the file had undefined ones, old
archives hold data sets without any file meta. None of that changes the content, so the
identity is the sha256 of what the catalog keeps of the data set, its DICOM JSON (decoded
values, bulk data as references), followed by each binary value (pixel data above all)
with the path of its element.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final, Protocol

from pydicom._dicom_dict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def content_sha256(dataset: Dataset, metadata_json: str) -> str:
    """sha256 of ``dataset``'s content; ``metadata_json`` is its DICOM JSON as indexed
    (:func:`catalog.to_dicom_json`)."""
    digest = hashlib.sha256(metadata_json.encode("utf-8"))
    _add_binary_values(dataset, digest, ())
    return digest.hexdigest()


def _add_binary_values(dataset: Dataset, digest: _Digest, path: tuple[int, ...]) -> None:
    for tag in sorted(dataset.keys()):
        element: DataElement | RawDataElement = dataset.get_item(tag)
        if isinstance(element, RawDataElement):
            vr = element.VR or _dictionary_vr(int(tag))
            if vr in _BINARY_VRS:
                _add(digest, (*path, int(tag)), element.value)
                continue
            if vr is not None and len(vr) == 2 and vr != "SQ":
                continue  # text or numbers: all in the JSON
            element = dataset[tag]  # a sequence, or a VR only pydicom can resolve
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                _add_binary_values(item, digest, (*path, int(tag), index))
        elif element.VR in _BINARY_VRS:
            _add(digest, (*path, int(tag)), element.value)


def _add(digest: _Digest, path: tuple[int, ...], value: object) -> None:
    data = value if isinstance(value, bytes) else b""
    digest.update(struct.pack(f"<{len(path)}LQ", *path, len(data)))
    digest.update(data)


def _dictionary_vr(tag: int) -> str | None:
    """The dictionary's VR of ``tag`` (``"OB or OW"`` for some), if it knows the tag."""
    entry = DicomDictionary.get(tag)
    return entry[0] if entry else None
