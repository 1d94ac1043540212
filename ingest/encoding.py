"""Write a changed data set back as a Part 10 file, copying the bytes it did not change.

De-identification touches a few dozen header elements of an instance whose bulk (pixel
data above all) stays as received. pydicom writes every element through its own Python
call; here each run of elements that are still in their received (raw) form and lie
back to back in the received stream is copied as one slice, and only the changed
elements go through pydicom's element writer. The result is byte for byte what
``Dataset.save_as(..., enforce_file_format=True)`` writes (a test holds it to that); when
the shortcut does not apply (deflated or re-encoded data sets) it is that call.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_PREAMBLE: Final = b"\0" * 128


def encode(dataset: Dataset, received: bytes | None = None) -> bytes:
    """``dataset`` as a Part 10 file in its own transfer syntax.

    ``received`` is the stream ``dataset`` was read from; elements still raw are copied
    from it.
    """
    meta = dataset.file_meta
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    syntax = meta.get("TransferSyntaxUID")
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    if (
        received is None
        or syntax is None
        or syntax == DeflatedExplicitVRLittleEndian
        or dataset.original_encoding != (implicit, little)
        or dataset.original_character_set != dataset._character_set
    ):
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    head = _buffer(little_endian=True, implicit_vr=False)
    head.write(dataset.preamble or _PREAMBLE)
    head.write(b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return b"".join([head.getvalue(), *_body(dataset, received, little, implicit)])


def _body(
    dataset: Dataset, received: bytes, little: bool, implicit: bool
) -> list[bytes | memoryview]:
    """The top-level elements in tag order: runs of unchanged raw elements as views of
    ``received`` (copied once, by the final join), changed elements written by pydicom."""
    stream = memoryview(received)
    tag_format = struct.Struct("<HH" if little else ">HH")
    encoding = dataset.get("SpecificCharacterSet", "iso8859")
    parts: list[bytes | memoryview] = []
    written = _buffer(little, implicit)
    run_start = run_end = 0
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        element = dataset.get_item(tag)
        span = _raw_span(element, implicit)
        if span and stream[span[0] : span[0] + 4] == tag_format.pack(tag.group, tag.element):
            if written.tell():
                parts.append(written.getvalue())
                written = _buffer(little, implicit)
            if span[0] != run_end:
                parts.append(stream[run_start:run_end])
                run_start = span[0]
            run_end = span[1]
            continue
        if run_end:
            parts.append(stream[run_start:run_end])
            run_start = run_end = 0
        write_data_element(written, element, encoding)
    parts.extend((stream[run_start:run_end], written.getvalue()))
    return parts


def _buffer(little_endian: bool, implicit_vr: bool) -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little_endian, implicit_vr
    return buffer


def _raw_span(element: DataElement | RawDataElement, implicit: bool) -> tuple[int, int] | None:
    """Where ``element`` (header included) lies in the received stream, if still raw."""
    if not isinstance(element, RawDataElement) or element.value is None:
        return None
    header = 8 if implicit or element.VR not in EXPLICIT_VR_LENGTH_32 else 12
    start = element.value_tell - header
    if element.length == _UNDEFINED_LENGTH:
        end = element.value_tell + len(element.value) + 8  # and the sequence delimiter
    elif element.length == len(element.value):
        end = element.value_tell + element.length
    else:
        return None
    return (start, end) if start > 0 else None
