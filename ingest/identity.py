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
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from pydicom._dicom_dict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from catalog.elements import element_of

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


Deferred = Callable[[RawDataElement], tuple[int, Iterable[bytes]]]
"""The value of an element pydicom deferred (read as a header only): its length (as
pydicom would read it: an undefined length one without its delimiter) and its pieces."""


def content_sha256(dataset: Dataset, metadata_json: str, deferred: Deferred | None = None) -> str:
    """sha256 of ``dataset``'s content; ``metadata_json`` is its DICOM JSON as indexed
    (:func:`catalog.to_dicom_json`); ``deferred`` reads values left in the received stream
    (a large instance's pixel data), which hash as if they had been read."""
    digest = hashlib.sha256(metadata_json.encode("utf-8"))
    _add_binary_values(dataset, digest, (), deferred)
    return digest.hexdigest()


def binary_values(dataset: Dataset) -> bytes:
    """What :func:`content_sha256` hashes after the DICOM JSON: ``sha256(json + this)`` is
    the content hash (for a bulk generator that varies only the JSON of one data set)."""
    parts: list[bytes] = []

    class _Collect:
        def update(self, data: bytes) -> None:
            parts.append(bytes(data))

    _add_binary_values(dataset, _Collect(), (), None)
    return b"".join(parts)


def _add_binary_values(
    dataset: Dataset, digest: _Digest, path: tuple[int, ...], deferred: Deferred | None
) -> None:
    for tag in sorted(dataset.keys()):
        element = element_of(dataset, tag)
        if isinstance(element, RawDataElement):
            vr = element.VR or _dictionary_vr(int(tag))
            if element.value is None and element.length:  # deferred: left in the stream
                binary = vr in _BINARY_VRS or vr == "OB or OW"  # pixel data read implicitly
                if binary and deferred and element.length != _UNDEFINED_LENGTH:
                    length, pieces = deferred(element)
                    digest.update(struct.pack(f"<{len(path) + 1}LQ", *path, int(tag), length))
                    for piece in pieces:
                        digest.update(piece)
                    continue
            elif vr in _BINARY_VRS:
                _add(digest, (*path, int(tag)), element.value)
                continue
            elif vr is not None and len(vr) == 2 and vr != "SQ":
                continue  # text or numbers: all in the JSON
            element = dataset[tag]  # a sequence, a VR only pydicom resolves, a deferred value
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                _add_binary_values(item, digest, (*path, int(tag), index), deferred)
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
