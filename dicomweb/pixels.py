"""Transfer syntaxes, frames, bulk data and rendered images of stored instances.

Everything here works on one instance in memory (its Part 10 bytes), with pydicom and its
pixel plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

UNCOMPRESSED: frozenset[str] = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
"""Syntaxes any instance can be re-encoded to (pixel data decoded first if needed)."""

ENCODABLE: tuple[str, ...] = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
"""Compressed syntaxes the node can encode to (lossless only: no quality to choose)."""

FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
"""Media type of a compressed frame in each syntax (PS3.18 Table 8.7.3-5)."""


class CannotTranscodeError(Exception):
    """The instance cannot be delivered in the transfer syntax asked for (HTTP 406)."""


class FrameNotFoundError(LookupError):
    """A frame number outside 1..NumberOfFrames (HTTP 404)."""


def _decodable(syntax: str) -> bool:
    if syntax in UNCOMPRESSED or syntax == ExplicitVRBigEndian:
        return True
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _encodable(syntax: str) -> bool:
    if syntax in UNCOMPRESSED:
        return True
    try:
        return syntax in ENCODABLE and bool(get_encoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(stored: str, target: str, has_pixels: bool) -> bool:
    """Whether an instance stored in ``stored`` can be sent in ``target``."""
    if target in ("*", stored):
        return True
    if not has_pixels:
        return target in UNCOMPRESSED
    return _decodable(stored) and _encodable(target)


def transcode(raw: bytes, target: str) -> bytes:
    """The Part 10 bytes of the instance in ``target`` (``raw`` itself if it already is)."""
    ds = dcmread(io.BytesIO(raw))
    stored = str(ds.file_meta.TransferSyntaxUID)
    if target in ("*", stored):
        return raw
    if "PixelData" in ds:
        if not can_transcode(stored, target, True):
            raise CannotTranscodeError(target)
        _to_native(ds, stored)
        if target in ENCODABLE:
            ds.compress(UID(target), generate_instance_uid=False)
    elif target not in UNCOMPRESSED:
        raise CannotTranscodeError(target)
    ds.file_meta.TransferSyntaxUID = UID(target)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _to_native(ds: Dataset, stored: str) -> None:
    """Decode compressed or big-endian pixel data in place into native little endian."""
    if UID(stored).is_compressed:
        ds.decompress(generate_instance_uid=False)
    elif stored == ExplicitVRBigEndian:
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, ds.original_character_set)  # write it as LE


def frames(raw: bytes, numbers: list[int], target: str) -> list[tuple[str, bytes]]:
    """``(transfer syntax, bytes)`` of each frame asked for.

    ``target`` ``"*"`` keeps the stored encoding; an uncompressed syntax gives native
    little-endian pixels; a compressed one re-encodes.
    """
    ds = dcmread(io.BytesIO(raw))
    if "PixelData" not in ds:
        raise FrameNotFoundError("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames") or 1)
    for number in numbers:
        if not 1 <= number <= count:
            raise FrameNotFoundError(f"frame {number} is not in 1..{count}")
    stored = str(ds.file_meta.TransferSyntaxUID)
    if target == "*" and stored == ExplicitVRBigEndian:
        target = ExplicitVRLittleEndian
    if target in ("*", stored) and UID(stored).is_compressed:
        encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
        return [(stored, encoded[n - 1]) for n in numbers]
    native = not UID(stored).is_compressed and stored != ExplicitVRBigEndian
    if native and (target in ("*", stored) or target in UNCOMPRESSED):
        size = len(ds.PixelData) // count
        return [(ExplicitVRLittleEndian, ds.PixelData[(n - 1) * size : n * size]) for n in numbers]
    if not can_transcode(stored, target, True):
        raise CannotTranscodeError(target)
    if target in UNCOMPRESSED:
        pixels = ds.pixel_array.reshape((count, -1)) if count > 1 else ds.pixel_array[None]
        little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
        return [(ExplicitVRLittleEndian, little[n - 1].tobytes()) for n in numbers]
    _to_native(ds, stored)
    ds.compress(UID(target), generate_instance_uid=False)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
    return [(target, encoded[n - 1]) for n in numbers]


def bulkdata(raw: bytes, path: list[str]) -> bytes | None:
    """The value at a BulkDataURI path (``7FE00010`` or ``00540016/0/00181074``), native
    pixels for Pixel Data; ``None`` when there is no such element."""
    ds: Dataset = dcmread(io.BytesIO(raw))
    try:
        for step in range(0, len(path) - 1, 2):
            ds = ds[int(path[step], 16)].value[int(path[step + 1])]
        tag = int(path[-1], 16)
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if tag not in ds:
        return None
    if tag == 0x7FE00010 and UID(str(ds.file_meta.TransferSyntaxUID)).is_compressed:
        stored = str(ds.file_meta.TransferSyntaxUID)
        if not _decodable(stored):
            raise CannotTranscodeError(ExplicitVRLittleEndian)
        ds.decompress(generate_instance_uid=False)
    value = ds[tag].value
    return value if isinstance(value, bytes) else None


@dataclass(frozen=True)
class RenderOptions:
    """What a /rendered or /thumbnail request asked for."""

    media_type: str = "image/jpeg"
    window: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    quality: int = 90


def render(raw: bytes, frame: int, options: RenderOptions) -> bytes:
    """A frame as a JPEG or PNG picture, windowed as asked or as the data set says."""
    ds = dcmread(io.BytesIO(raw))
    if "PixelData" not in ds:
        raise FrameNotFoundError("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= frame <= count:
        raise FrameNotFoundError(f"frame {frame} is not in 1..{count}")
    if not _decodable(str(ds.file_meta.TransferSyntaxUID)):
        raise CannotTranscodeError(options.media_type)
    pixels = ds.pixel_array
    if count > 1:
        pixels = pixels[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 2:
        image = Image.fromarray(_grey(ds, pixels, options.window, photometric), "L")
    else:
        image = Image.fromarray(_to_uint8(pixels.astype(np.float64)), "RGB")
    if options.size:
        image.thumbnail(options.size)
    buffer = io.BytesIO()
    if options.media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=options.quality)
    return buffer.getvalue()


def _grey(
    ds: Dataset, pixels: Any, window: tuple[float, float] | None, photometric: str
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window is None:
        window = _dataset_window(ds)
    if window is None:
        scaled = _to_uint8(values)
    else:
        center, width = window
        low = center - 0.5 - (width - 1) / 2
        scaled = np.clip((values - low) / max(width - 1, 1) * 255.0, 0, 255).astype(np.uint8)
    return 255 - scaled if photometric == "MONOCHROME1" else scaled


def _dataset_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        first_center = center[0] if isinstance(center, MultiValue) else center
        first_width = width[0] if isinstance(width, MultiValue) else width
        return float(first_center), float(first_width)
    except (TypeError, ValueError, IndexError):
        return None


def _to_uint8(values: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - low) / (high - low) * 255.0).astype(np.uint8)


def transfer_syntax_table() -> list[tuple[str, str, bool, bool]]:
    """``(uid, name, can decode, can encode)`` of the syntaxes this installation knows."""
    known = [*sorted(UNCOMPRESSED), ExplicitVRBigEndian, *sorted(FRAME_MEDIA_TYPES)]
    return [(uid, UID(uid).name, _decodable(uid), _encodable(uid)) for uid in known]
