"""Whether an instance's native pixel data holds the image its attributes describe.

Rows x Columns x Number of Frames x Samples per Pixel x Bits Allocated (with 1-bit packing
and YBR_FULL_422 subsampling) give the length pydicom expects. An instance whose Pixel Data,
Float Pixel Data or Double Float Pixel Data is shorter would be stored with Success and then
fail on every read, so ingest refuses it. Encapsulated (compressed) pixel data is not
checked: its length says nothing until it is decoded. Attributes pydicom cannot use (missing,
out of range) are left to the readers, which say why they cannot show the image.
"""

from __future__ import annotations

from io import BytesIO
from math import ceil

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from catalog.elements import element_of

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def pixel_data_problem(dataset: Dataset) -> str | None:
    """Why the native pixel data of ``dataset`` is too short for its image, or ``None``."""
    keyword = next((k for k in PIXEL_KEYWORDS if k in dataset), None)
    syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    if keyword is None or not syntax.is_transfer_syntax or syntax.is_encapsulated:
        return None
    runner = DecodeRunner(syntax)
    # An empty stream as the source: validate() then checks the attributes only, and the
    # (possibly large, still raw) pixel data element is not converted.
    runner.set_source(BytesIO())
    try:
        runner.set_options(**as_pixel_options(dataset))
        runner.set_option("pixel_keyword", keyword)
        runner.validate()
        expected = ceil(runner.frame_length(unit="bytes") * runner.number_of_frames)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    element = element_of(dataset, keyword)
    if element is None:
        actual = 0
    elif element.value is None and isinstance(element, RawDataElement):
        actual = element.length  # deferred: left in the received stream
    else:
        actual = len(element.value or b"")
    if actual >= expected:
        return None  # equal, one odd-length pad byte, or excess pydicom ignores
    return f"pixel data has {actual} bytes, the image attributes need {expected}"
