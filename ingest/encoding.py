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
from pydicom.multival import MultiValue
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
    read_implicitly = _read_implicitly(dataset)
    if read_implicitly and not implicit:
        # Raw elements would be copied (and written) in the wrong encoding: convert them all
        # so pydicom writes them in the one the file meta declares.
        dataset.walk(lambda _dataset, _element: None)
    if (
        received is None
        or syntax is None
        or syntax == DeflatedExplicitVRLittleEndian
        or read_implicitly != implicit
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


def _read_implicitly(dataset: Dataset) -> bool:
    """Whether pydicom read the data set's elements as implicit VR.

    A sender may declare explicit VR in the file meta and send implicit VR elements
    (pydicom's ``SC_rgb_jpeg.dcm``); pydicom then reads them implicitly but still reports
    the file meta's encoding in ``original_encoding`` (pydicom 3.0). Its raw elements tell:
    read implicitly, they carry no VR.
    """
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset converts elements)
        element = dataset.get_item(tag)
        if isinstance(element, RawDataElement):
            return element.VR is None
    return bool(dataset.original_encoding[0])


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
        simple = _simple_element(element, little, implicit)
        if simple is None:
            write_data_element(written, element, encoding)
        else:
            written.write(simple)
    parts.extend((stream[run_start:run_end], written.getvalue()))
    return parts


def _simple_element(
    element: DataElement | RawDataElement, little: bool, implicit: bool
) -> bytes | None:
    """The bytes pydicom's ``write_data_element`` gives a changed element of the common kinds
    (ASCII text of the VRs whose value is the text, one binary number), or ``None``: each
    went through several of pydicom's Python calls, and de-identification changes dozens."""
    if isinstance(element, RawDataElement) or element.is_undefined_length:
        return None
    vr, value = element.VR, element.value
    if vr in _TEXT_PAD:
        if value is None:
            text = ""
        elif isinstance(value, str):
            text = value
        elif isinstance(value, MultiValue | list) and all(isinstance(v, str) for v in value):
            text = "\\".join(value)
        else:
            return None
        if not text.isascii():
            return None
        data = text.encode("ascii")
        if len(data) % 2:
            data += _TEXT_PAD[vr]
    elif vr in _NUMBER_FORMATS and type(value) in _NUMBER_FORMATS[vr][1]:
        try:
            data = struct.pack(("<" if little else ">") + _NUMBER_FORMATS[vr][0], value)
        except struct.error:
            return None
    else:
        return None
    order = "<" if little else ">"
    tag = struct.pack(f"{order}HH", element.tag >> 16, element.tag & 0xFFFF)
    if implicit:
        return tag + struct.pack(f"{order}L", len(data)) + data
    if vr in EXPLICIT_VR_LENGTH_32:
        return tag + _VR_BYTES[vr] + struct.pack(f"{order}HL", 0, len(data)) + data
    if len(data) > 0xFFFF:
        return None  # pydicom writes it as UN (PS3.5 6.2.2)
    return tag + _VR_BYTES[vr] + struct.pack(f"{order}H", len(data)) + data


_TEXT_PAD: Final = {
    **dict.fromkeys(("AE", "AS", "CS", "DA", "DT", "TM", "UR"), b" "),  # write_string
    **dict.fromkeys(("LO", "SH", "ST", "LT", "UT", "UC"), b" "),  # write_text
    "UI": b"\0",
}
_INTEGER: Final = (int,)
_NUMBER_FORMATS: Final = {
    "US": ("H", _INTEGER),
    "SS": ("h", _INTEGER),
    "UL": ("L", _INTEGER),
    "SL": ("l", _INTEGER),
    "UV": ("Q", _INTEGER),
    "SV": ("q", _INTEGER),
    "FL": ("f", (int, float)),
    "FD": ("d", (int, float)),
}
_VR_BYTES: Final = {vr: vr.encode("ascii") for vr in [*_TEXT_PAD, *_NUMBER_FORMATS]}


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
