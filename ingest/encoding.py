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
from collections.abc import Callable
from io import BytesIO
from typing import Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from catalog.elements import element_of

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_PREAMBLE: Final = b"\0" * 128


Part = bytes | tuple[int, int]
"""A piece of an encoded file: bytes written, or a ``(start, end)`` range of the received
stream, copied as it is."""


def encode(dataset: Dataset, received: bytes | None = None) -> bytes:
    """``dataset`` as a Part 10 file in its own transfer syntax.

    ``received`` is the stream ``dataset`` was read from; elements still raw are copied
    from it.
    """
    stream = memoryview(received) if received is not None else None
    parts = None if stream is None else encode_parts(dataset, lambda at: bytes(stream[at : at + 4]))
    if parts is None or stream is None:
        if _read_implicitly(dataset) and dataset.file_meta.get("TransferSyntaxUID") != (
            ImplicitVRLittleEndian
        ):
            # Raw elements would be written in the wrong encoding: convert them all so
            # pydicom writes them in the one the file meta declares.
            dataset.walk(lambda _dataset, _element: None)
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    return b"".join(p if isinstance(p, bytes) else stream[p[0] : p[1]] for p in parts)


def encode_parts(dataset: Dataset, tag_at: Callable[[int], bytes]) -> list[Part] | None:
    """``dataset`` as a Part 10 file made of written bytes and ranges of the received
    stream (whose 4 bytes at an offset ``tag_at`` gives); None when its elements cannot be
    copied as received (deflated, re-encoded, or a deferred value with no known end)."""
    meta = dataset.file_meta
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    syntax = meta.get("TransferSyntaxUID")
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    if (
        syntax is None
        or syntax == DeflatedExplicitVRLittleEndian
        or _read_implicitly(dataset) != implicit
        or dataset.original_encoding != (implicit, little)
        or dataset.original_character_set != dataset._character_set
    ):
        return None
    head = _buffer(little_endian=True, implicit_vr=False)
    head.write(dataset.preamble or _PREAMBLE)
    head.write(b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = _body(dataset, tag_at, little, implicit)
    return None if body is None else [head.getvalue(), *body]


def _read_implicitly(dataset: Dataset) -> bool:
    """Whether pydicom read the data set's elements as implicit VR.

    A sender may declare explicit VR in the file meta and send implicit VR elements
    (pydicom's ``SC_rgb_jpeg.dcm``); pydicom then reads them implicitly but still reports
    the file meta's encoding in ``original_encoding`` (pydicom 3.0). Its raw elements tell:
    read implicitly, they carry no VR.
    """
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset converts elements)
        element = element_of(dataset, tag)
        if isinstance(element, RawDataElement):
            return element.VR is None
    return bool(dataset.original_encoding[0])


def _body(
    dataset: Dataset, tag_at: Callable[[int], bytes], little: bool, implicit: bool
) -> list[Part] | None:
    """The top-level elements in tag order: runs of unchanged raw elements as ranges of
    the received stream, changed elements written by pydicom."""
    tag_format = struct.Struct("<HH" if little else ">HH")
    encoding = dataset.get("SpecificCharacterSet", "iso8859")
    parts: list[Part] = []
    written = _buffer(little, implicit)
    run_start = run_end = 0
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        element = element_of(dataset, tag)
        span = _raw_span(element, implicit)
        if span and tag_at(span[0]) == tag_format.pack(tag.group, tag.element):
            if written.tell():
                parts.append(written.getvalue())
                written = _buffer(little, implicit)
            if span[0] != run_end:
                parts.append((run_start, run_end))
                run_start = span[0]
            run_end = span[1]
            continue
        if isinstance(element, RawDataElement) and element.value is None and element.length:
            return None  # deferred, and not where it was read: its value is not here
        if run_end:
            parts.append((run_start, run_end))
            run_start = run_end = 0
        _write(written, element, encoding, little, implicit)
    parts.extend(((run_start, run_end), written.getvalue()))
    return parts


def _write(
    out: DicomBytesIO,
    element: DataElement | RawDataElement,
    encoding: str | list[str],
    little: bool,
    implicit: bool,
) -> None:
    """Write a changed element: the common kinds and sequences here, the rest by pydicom."""
    written = _simple_element(element, little, implicit)
    if written is None and element.VR == "SQ" and isinstance(element, DataElement):
        written = _sequence(element, encoding, little, implicit)
    if written is None:
        write_data_element(out, element, encoding)
    else:
        out.write(written)


def _sequence(
    element: DataElement, encoding: str | list[str], little: bool, implicit: bool
) -> bytes | None:
    """A sequence as pydicom's writer gives it, with each item's unchanged (raw) elements
    copied from their received bytes: de-identification converts every sequence it walks,
    and writing each of their elements through pydicom cost more than the rest of the
    encoding. None when pydicom would correct an item's elements first (an item read in
    another encoding, or made here with an ambiguous VR such as "US or SS")."""
    value = element.value
    if not isinstance(value, PydicomSequence):
        return None
    order = "<" if little else ">"
    items = []
    for item in value:
        # an item pydicom's write_dataset would first correct (converting raw elements)
        corrected = item.original_encoding != (implicit, little) or (
            item.original_character_set != item._character_set
        )
        out = _buffer(little, implicit)
        item_encoding = item.get("SpecificCharacterSet", encoding)
        for tag in sorted(item.keys()):
            if tag.element == 0 and tag.group > 6:
                continue  # retired group lengths are not written (PS3.5 7.2)
            inner = element_of(item, tag)
            if corrected and (isinstance(inner, RawDataElement) or len(inner.VR or "") != 2):
                return None
            if isinstance(inner, RawDataElement):
                raw = _raw_element(inner, order, implicit)
                if raw is None:
                    return None
                out.write(raw)
            else:
                _write(out, inner, item_encoding, little, implicit)
        body = out.getvalue()
        if getattr(item, "is_undefined_length_sequence_item", False):
            items.append(_ITEM[order] + b"\xff\xff\xff\xff" + body + _ITEM_END[order])
        else:
            items.append(_ITEM[order] + struct.pack(f"{order}L", len(body)) + body)
    data = b"".join(items)
    header = _tag_bytes(element, order) + (b"" if implicit else b"SQ\0\0")
    if element.is_undefined_length:
        return header + b"\xff\xff\xff\xff" + data + _SEQUENCE_END[order]
    return header + struct.pack(f"{order}L", len(data)) + data


def _raw_element(element: RawDataElement, order: str, implicit: bool) -> bytes | None:
    """A still-raw element as pydicom's writer gives it (its value as read), or None for
    those it writes otherwise (deferred, undefined length, too long for its VR)."""
    data = element.value
    if data is None or element.length == _UNDEFINED_LENGTH:
        return None
    tag = _tag_bytes(element, order)
    if implicit:
        return tag + struct.pack(f"{order}L", len(data)) + data
    vr = element.VR
    if vr is None or len(vr) != 2:
        return None
    if vr in EXPLICIT_VR_LENGTH_32:
        return tag + vr.encode("ascii") + struct.pack(f"{order}HL", 0, len(data)) + data
    if len(data) > 0xFFFF:
        return None  # pydicom writes it as UN (PS3.5 6.2.2)
    return tag + vr.encode("ascii") + struct.pack(f"{order}H", len(data)) + data


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
    tag = _tag_bytes(element, order)
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
_ITEM: Final = {"<": b"\xfe\xff\x00\xe0", ">": b"\xff\xfe\xe0\x00"}
_ITEM_END: Final = {"<": b"\xfe\xff\x0d\xe0\0\0\0\0", ">": b"\xff\xfe\xe0\x0d\0\0\0\0"}
_SEQUENCE_END: Final = {"<": b"\xfe\xff\xdd\xe0\0\0\0\0", ">": b"\xff\xfe\xe0\xdd\0\0\0\0"}


def _tag_bytes(element: DataElement | RawDataElement, order: str) -> bytes:
    return struct.pack(f"{order}HH", element.tag >> 16, element.tag & 0xFFFF)


def _buffer(little_endian: bool, implicit_vr: bool) -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little_endian, implicit_vr
    return buffer


def _raw_span(element: DataElement | RawDataElement, implicit: bool) -> tuple[int, int] | None:
    """Where ``element`` (header included) lies in the received stream, if still raw."""
    if not isinstance(element, RawDataElement):
        return None
    header = 8 if implicit or element.VR not in EXPLICIT_VR_LENGTH_32 else 12
    start = element.value_tell - header
    if element.value is None:  # deferred (read later from the stream): a defined length
        if not element.length or element.length == _UNDEFINED_LENGTH:
            return None
        end = element.value_tell + element.length
    elif element.length == _UNDEFINED_LENGTH:
        end = element.value_tell + len(element.value) + 8  # and the sequence delimiter
    elif element.length == len(element.value):
        end = element.value_tell + element.length
    else:
        return None
    return (start, end) if start > 0 else None
