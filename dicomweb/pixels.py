"""Transfer syntaxes, frames, bulk data and rendered images of stored instances.

Everything here works on one instance in memory (its Part 10 bytes). Pixel data is decoded
by pydicom with its pixel plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg,
pylibjpeg-rle, pyjpegls, Pillow) in this process; when they all fail on a compressed
stream, GDCM (python-gdcm) decodes it in a child process (``gdcm_worker.py``: GDCM is C++
that can corrupt its heap on malformed streams, so it never runs inside the node, see
``node.app.configure_libraries``).

Failures are typed for the routes: :class:`FrameNotFoundError` (404),
:class:`CannotTranscodeError` (406: nothing here can produce what was asked) and
:class:`PixelDataError` (422: the stored pixel data cannot be decoded or contradicts its
attributes; its message says why).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels.decoders import gdcm as pydicom_gdcm
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pack_bits, pixel_array
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

from ingest.pixeldata import PIXEL_KEYWORDS

log = logging.getLogger(__name__)

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

MAX_FRAME_PIXELS = 1 << 26
"""Largest frame decoded (Rows x Columns x Samples per Pixel, e.g. 8192 x 8192 grey): a
compressed stream may claim any size, and rendering holds a few copies of the frame."""

GDCM_TIMEOUT = 120.0
"""Seconds a GDCM child process may take before it is killed."""

_GDCM_WORKER = Path(__file__).with_name("gdcm_worker.py")
_GDCM_AVAILABLE = importlib.util.find_spec("gdcm") is not None
_GDCM_SYNTAXES = frozenset(pydicom_gdcm.DECODER_DEPENDENCIES)
_GDCM_SLOTS = threading.BoundedSemaphore(2)  # GDCM children at once


class CannotTranscodeError(Exception):
    """The instance cannot be delivered in the transfer syntax asked for (HTTP 406)."""


class FrameNotFoundError(LookupError):
    """A frame number outside 1..NumberOfFrames (HTTP 404)."""


class PixelDataError(Exception):
    """The stored pixel data cannot be decoded, or contradicts its attributes (HTTP 422)."""


def _gdcm_decodes(syntax: str) -> bool:
    return _GDCM_AVAILABLE and syntax in _GDCM_SYNTAXES


def _decodable(syntax: str) -> bool:
    if syntax in UNCOMPRESSED or syntax == ExplicitVRBigEndian:
        return True
    try:
        return bool(get_decoder(UID(syntax)).is_available) or _gdcm_decodes(syntax)
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


# ----------------------------------------------------------------------------- decoding


def _open(raw: bytes) -> Dataset:
    return dcmread(io.BytesIO(raw))


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (pydicom lists each plugin's failure on its own)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _has_pixels(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in PIXEL_KEYWORDS)


def _frame_count(ds: Dataset) -> int:
    """Number of Frames (1 when absent or empty), for an instance with pixel data."""
    if not _has_pixels(ds):
        raise FrameNotFoundError("the instance has no pixel data")
    value = ds.get("NumberOfFrames")
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise PixelDataError("Number of Frames (0028,0008) is not a number") from None
    return max(count, 1)


def _check_frame(number: int, count: int) -> None:
    if not 1 <= number <= count:
        raise FrameNotFoundError(f"frame {number} is not in 1..{count}")


def _frame_samples(ds: Dataset) -> int:
    """Rows x Columns x Samples per Pixel, refused above MAX_FRAME_PIXELS (a compressed
    stream may claim any size)."""
    try:
        samples = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError):
        raise PixelDataError("Rows, Columns or Samples per Pixel is missing or invalid") from None
    if samples > MAX_FRAME_PIXELS:
        raise PixelDataError(
            f"a frame of {samples} samples is larger than this node decodes ({MAX_FRAME_PIXELS})"
        )
    return samples


def _gdcm_decoded(raw: bytes, decoded_size: int, why: str) -> Dataset:
    """The instance with its pixel data decoded to native little endian by GDCM, in a child
    process whose address space is capped; ``why`` is what pydicom's codecs said."""
    limit = max(1 << 30, 4 * (len(raw) + decoded_size) + (512 << 20))
    command = [sys.executable, "-I", str(_GDCM_WORKER), str(limit)]
    with _GDCM_SLOTS:
        try:
            done = subprocess.run(
                command, input=raw, capture_output=True, timeout=GDCM_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise PixelDataError(f"{why}; GDCM: no result within {GDCM_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        said = lines[-1] if done.returncode > 0 and lines else f"stopped ({done.returncode})"
        raise PixelDataError(f"{why}; GDCM: {' '.join(said.split())[:200]}")
    try:
        return _open(done.stdout)
    except Exception as exc:
        raise PixelDataError(f"{why}; GDCM's output: {_reason(exc)}") from None


class _Decoder:
    """Frames of one stored instance, decoded on demand: by pydicom in this process, else
    (compressed streams its codecs reject) by GDCM in a child process, once."""

    def __init__(self, ds: Dataset, raw: bytes) -> None:
        self.source = ds
        self.raw = raw
        self.syntax = _syntax(ds)
        if not _decodable(self.syntax):
            raise CannotTranscodeError(self.syntax)
        # What GDCM may decode at most: every frame, 8 bytes a sample.
        self.decoded_size = 8 * _frame_samples(ds) * _frame_count(ds)
        self._gdcm_tried = False

    def frame(self, index: int) -> tuple[np.ndarray[Any, Any], Dataset]:
        """Frame ``index`` (from 0) as pydicom gives it (YBR converted to RGB), and the data
        set that describes it (GDCM's output when GDCM decoded it)."""
        try:
            return pixel_array(self.source, index=index), self.source
        except Exception as exc:  # codecs raise anything on damaged streams
            if self._gdcm_tried or not _gdcm_decodes(self.syntax):
                raise PixelDataError(_reason(exc)) from None
            self._gdcm_tried = True
            self.source = _gdcm_decoded(self.raw, self.decoded_size, _reason(exc))
        try:
            return pixel_array(self.source, index=index), self.source
        except Exception as exc:
            raise PixelDataError(f"GDCM's output: {_reason(exc)}") from None

    def native(self) -> Dataset:
        """The whole instance with native little-endian pixel data (in place when pydicom
        can decode it)."""
        ds = self.source
        if self.syntax == ExplicitVRBigEndian:
            try:
                pixels = pixel_array(ds)
            except Exception as exc:
                raise PixelDataError(_reason(exc)) from None
            keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
            setattr(ds, keyword, _little_endian_bytes(ds, pixels))
            if keyword == "PixelData":
                ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.set_original_encoding(False, True, ds.original_character_set)  # write it as LE
            return ds
        if not UID(self.syntax).is_compressed:
            return ds
        try:
            ds.decompress(generate_instance_uid=False)
            return ds
        except Exception as exc:
            if not _gdcm_decodes(self.syntax):
                raise PixelDataError(_reason(exc)) from None
            self.source = _gdcm_decoded(self.raw, self.decoded_size, _reason(exc))
            return self.source


def _little_endian_bytes(ds: Dataset, pixels: np.ndarray[Any, Any]) -> bytes:
    if int(ds.get("BitsAllocated") or 8) == 1:
        return pack_bits(pixels)
    return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


# ---------------------------------------------------------------------------- transcoding


def transcode(raw: bytes, target: str) -> bytes:
    """The Part 10 bytes of the instance in ``target`` (``raw`` itself if it already is)."""
    ds = _open(raw)
    stored = _syntax(ds)
    if target in ("*", stored):
        return raw
    if _has_pixels(ds):
        if not can_transcode(stored, target, True):
            raise CannotTranscodeError(target)
        if UID(stored).is_compressed or stored == ExplicitVRBigEndian:
            ds = _Decoder(ds, raw).native()
        if target in ENCODABLE:
            _compress(ds, target)
    elif target not in UNCOMPRESSED:
        raise CannotTranscodeError(target)
    ds.file_meta.TransferSyntaxUID = UID(target)
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as exc:  # a stored data set pydicom cannot write again
        log.warning("a stored data set cannot be written in %s: %s", target, type(exc).__name__)
        raise CannotTranscodeError(target) from None
    return buffer.getvalue()


def _compress(ds: Dataset, target: str) -> None:
    try:
        ds.compress(UID(target), generate_instance_uid=False)
    except Exception:  # e.g. a bit depth the encoder does not take
        raise CannotTranscodeError(target) from None


# --------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frames:
    """Frames asked for, in ``transfer_syntax``, produced one by one as they are sent."""

    transfer_syntax: str
    parts: Iterator[bytes]


def frames(raw: bytes, numbers: list[int], target: str) -> Frames:
    """The frames ``numbers`` (from 1, repeats allowed) of the instance.

    ``target`` ``"*"`` keeps the stored encoding; an uncompressed syntax gives native
    little-endian pixels; a compressed one re-encodes. The first frame is made before this
    returns, so a frame that cannot be made fails here, before an answer has started.
    """
    ds = _open(raw)
    count = _frame_count(ds)
    for number in numbers:
        _check_frame(number, count)
    stored = _syntax(ds)
    if target == "*" and stored == ExplicitVRBigEndian:
        target = ExplicitVRLittleEndian
    syntax, frame = _frame_source(ds, raw, stored, target, count)
    get = functools.lru_cache(maxsize=8)(frame)
    first = get(numbers[0])

    def parts() -> Iterator[bytes]:
        yield first
        for number in numbers[1:]:
            yield get(number)

    return Frames(syntax, parts())


def _frame_source(
    ds: Dataset, raw: bytes, stored: str, target: str, count: int
) -> tuple[str, Callable[[int], bytes]]:
    """The syntax frames are sent in, and how to make frame N in it."""
    compressed = UID(stored).is_compressed
    if target in ("*", stored) and compressed:
        return stored, _encapsulated_frames(ds.PixelData, count)
    if not compressed and stored != ExplicitVRBigEndian and target in (*UNCOMPRESSED, "*"):
        return ExplicitVRLittleEndian, _native_frames(ds)
    if not can_transcode(stored, target, True):
        raise CannotTranscodeError(target)
    decoder = _Decoder(ds, raw)
    if target in UNCOMPRESSED:

        def decoded(number: int) -> bytes:
            pixels, described = decoder.frame(number - 1)
            return _little_endian_bytes(described, pixels)

        return ExplicitVRLittleEndian, decoded
    native = decoder.native()
    _compress(native, target)
    return target, _encapsulated_frames(native.PixelData, count)


def _encapsulated_frames(pixel_data: bytes, count: int) -> Callable[[int], bytes]:
    """Frame N of encapsulated pixel data, as stored (its fragments split once)."""

    @functools.cache
    def split() -> list[bytes]:
        try:
            return list(generate_frames(pixel_data, number_of_frames=count))
        except Exception as exc:
            raise PixelDataError(
                f"the encapsulated pixel data is malformed: {_reason(exc)}"
            ) from None

    def frame(number: int) -> bytes:
        encoded = split()
        if number > len(encoded):
            raise PixelDataError(
                f"the encapsulated pixel data holds {len(encoded)} frames, not {count}"
            )
        return encoded[number - 1]

    return frame


def _native_frames(ds: Dataset) -> Callable[[int], bytes]:
    """Frame N of native little-endian pixel data, as stored (sliced where pydicom says
    each frame lies; 1-bit frames that end inside a byte are repacked)."""
    runner = DecodeRunner(UID(_syntax(ds)))
    try:
        runner.set_source(ds)
        runner.validate()  # attributes, and a buffer long enough for every frame
        length = runner.frame_length(unit="bytes")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PixelDataError(_reason(exc)) from None
    value = ds[runner.pixel_keyword].value
    if isinstance(length, int):
        return lambda number: bytes(value[(number - 1) * length : number * length])

    def packed(number: int) -> bytes:
        try:
            return pack_bits(pixel_array(ds, index=number - 1, raw=True))
        except Exception as exc:
            raise PixelDataError(_reason(exc)) from None

    return packed


# ------------------------------------------------------------------------------ bulk data


def bulkdata(raw: bytes, path: list[str]) -> bytes | None:
    """The value at a BulkDataURI path (``7FE00010`` or ``00540016/0/00181074``), native
    pixels for Pixel Data; ``None`` when there is no such element."""
    ds: Dataset = _open(raw)
    top = ds
    try:
        for step in range(0, len(path) - 1, 2):
            ds = ds[int(path[step], 16)].value[int(path[step + 1])]
        tag = int(path[-1], 16)
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if tag not in ds:
        return None
    if tag == 0x7FE00010 and ds is top and UID(_syntax(top)).is_compressed:
        ds = _Decoder(top, raw).native()
    value = ds[tag].value
    return value if isinstance(value, bytes) else None


# ------------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class RenderOptions:
    """What a /rendered or /thumbnail request asked for."""

    media_type: str = "image/jpeg"
    window: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    quality: int = 90
    function: str = "linear"
    """VOI LUT function of ``window``: ``linear``, ``linear-exact`` or ``sigmoid``."""


WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


def render(raw: bytes, frame: int, options: RenderOptions) -> bytes:
    """A frame as a JPEG or PNG picture, windowed as asked or as the data set says."""
    ds = _open(raw)
    _check_frame(frame, _frame_count(ds))
    pixels, described = _Decoder(ds, raw).frame(frame - 1)
    try:
        image = _picture(described, pixels, options)
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise PixelDataError(f"cannot render the pixel data: {_reason(exc)}") from None
    if options.size:
        image.thumbnail(options.size)
    buffer = io.BytesIO()
    if options.media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=options.quality)
    return buffer.getvalue()


def _picture(ds: Dataset, pixels: np.ndarray[Any, Any], options: RenderOptions) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if pixels.ndim == 2 and photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 2:
        grey = _grey(ds, pixels, options.window, options.function)
        return Image.fromarray(255 - grey if photometric == "MONOCHROME1" else grey, "L")
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        return Image.fromarray(_colour(ds, pixels), "RGB")
    raise ValueError(f"{pixels.shape[-1]} samples per pixel cannot be shown")


def _colour(ds: Dataset, pixels: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.integer):
        top = 65535 if "RedPaletteColorLookupTableData" in ds else 2 ** int(ds.BitsStored) - 1
        return np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
    return _to_uint8(pixels.astype(np.float64))


def _grey(
    ds: Dataset,
    pixels: np.ndarray[Any, Any],
    window: tuple[float, float] | None,
    function: str,
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if window is None:
        window, function = _dataset_window(ds), "linear"
    if window is None:
        return _to_uint8(values)
    center, width = window
    if function == "sigmoid":  # PS3.3 C.11.2.1.3.1
        scaled = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    elif function == "linear-exact":  # PS3.3 C.11.2.1.3.2
        scaled = (values - center) / width + 0.5
    else:  # PS3.3 C.11.2.1.2.1
        scaled = (values - (center - 0.5 - (width - 1) / 2)) / max(width - 1, 1)
    return np.clip(scaled * 255.0, 0, 255).astype(np.uint8)


def _dataset_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        first_center = float(center[0] if isinstance(center, MultiValue) else center)
        first_width = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(first_center) and math.isfinite(first_width) and first_width > 0):
        return None
    return first_center, first_width


def _to_uint8(values: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - low) / (high - low) * 255.0).astype(np.uint8)


def transfer_syntax_table() -> list[tuple[str, str, bool, bool]]:
    """``(uid, name, can decode, can encode)`` of the syntaxes this installation knows."""
    known = [*sorted(UNCOMPRESSED), ExplicitVRBigEndian, *sorted(FRAME_MEDIA_TYPES)]
    return [(uid, UID(uid).name, _decodable(uid), _encodable(uid)) for uid in known]
