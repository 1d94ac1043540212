"""Small helpers that turn pydicom data sets into the Part 10 bytes a door hands to ingest."""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

# pydicom's own test files, as their authors encoded them: big endian, implicit VR, group
# lengths, nested sequences, RT, SR and waveform objects, JPEG, JPEG 2000 and RLE fragments,
# a deflated data set. (Local files only: others would be downloaded.)
PYDICOM_SAMPLES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "JPEG2000.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_32bit.dcm",
    "image_dfl.dcm",
)


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sample(name: str = "CT_small.dcm") -> Dataset:
    return dcmread(get_testdata_file(name))


def nested_sequences(depth: int) -> bytes:
    """A CT whose Referenced Image Sequence nests ``depth`` levels deep (a parser bomb).

    pydicom cannot write such a file itself (it recurses too), so the sequence is spliced in
    as explicit VR little endian bytes with undefined lengths.
    """
    ds = sample()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    placeholder = b"NESTED-SEQUENCES"
    ds.add_new(0x00081140, "OB", placeholder)
    raw = part10(ds)
    element = struct.pack("<HH2sHI", 0x0008, 0x1140, b"OB", 0, len(placeholder)) + placeholder
    opening = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert raw.count(element) == 1
    return raw.replace(element, opening * depth + closing * depth)
