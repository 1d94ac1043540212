"""Data sets stored without preamble and file meta: give them the file meta a network
transfer would, so that import accepts what C-STORE accepts.

A C-STORE carries a bare data set; the transfer syntax comes from the presentation context
and the receiver writes the file meta (pynetdicom's ``Event.encoded_dataset``). Files written
that way (old archives, pydicom's ``rtstruct.dcm``) have no "DICM" prefix: here pydicom
detects their transfer syntax, as dcmtk's ``--read-dataset`` does.

A file is taken for such a data set only when its first element is in group 0008 (where
every composite instance starts: Specific Character Set, Image Type, SOP Class UID ...), in
little or big endian, pydicom reads it to the end, and it names its SOP Class and SOP Instance
UIDs; the pipeline then validates it as any other instance. Text, images, archives and
other binary files fail the first test already.
"""

from __future__ import annotations

from io import BytesIO
from typing import Final

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

NOT_DICOM: Final = "not a DICOM file (no DICM prefix or file meta)"
PIXEL_DATA: Final = 0x7FE00010
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_PREAMBLE_AND_PREFIX: Final = b"\0" * 128 + b"DICM"


class HeaderlessError(ValueError):
    """Not a data set this module can give a file meta; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_part10(head: bytes) -> bool:
    """Whether a stream starting with ``head`` (132 bytes or more) has the DICM prefix."""
    return head[128:132] == b"DICM"


def may_be_data_set(head: bytes) -> bool:
    """Whether a stream starting with ``head`` may be a data set without file meta: its first
    element is in group 0008, little or big endian."""
    return head[:2] in (b"\x08\x00", b"\x00\x08")


def add_file_meta(data: bytes) -> tuple[bytes, UID]:
    """``data``, a data set without preamble and file meta, as a Part 10 stream, and the
    transfer syntax it was found in.

    Raises
    ------
    HeaderlessError
        ``data`` is not such a data set, or its transfer syntax cannot be known (compressed
        pixel data says nothing of its codec).
    """
    if not may_be_data_set(data):
        raise HeaderlessError(NOT_DICOM)
    try:
        dataset = dcmread(BytesIO(data), force=True)
        sop_class = UID(str(dataset.get("SOPClassUID", "") or "").strip("\0 "))
        sop_instance = UID(str(dataset.get("SOPInstanceUID", "") or "").strip("\0 "))
    except Exception:  # pydicom's errors on garbage are of many kinds
        raise HeaderlessError(NOT_DICOM) from None
    implicit, little = dataset.original_encoding
    if not (sop_class and sop_instance) or (implicit and not little):
        raise HeaderlessError(NOT_DICOM)
    pixels = dataset.get_item(PIXEL_DATA) if PIXEL_DATA in dataset else None
    if isinstance(pixels, RawDataElement) and pixels.length == _UNDEFINED_LENGTH:
        raise HeaderlessError(
            "no file meta, and the pixel data is compressed: its transfer syntax is unknown"
        )
    if implicit:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(_PREAMBLE_AND_PREFIX)
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + data, syntax
