"""A large multi-frame instance written straight to a file (never whole in memory), and the
probes the large-instance test and bench use on a node: peak memory, spool files, the
stored blob's header and pixel data."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PHI_NAME = "LARGEPHI^MARKER^ZQX"
PHI_ID = "LARGEPHI-ID-7731"
FRAME = 1024 * 1024  # bytes of one 512 x 512 frame of 16-bit pixels
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LargeInstance:
    path: Path
    sop_instance_uid: str
    pixel_sha256: str
    size: int


def _frame(number: int) -> bytes:
    """Frame ``number``'s pixels: distinct per frame, cheap to make, not compressible away."""
    seed = hashlib.sha256(number.to_bytes(4, "little")).digest()
    return (seed * (FRAME // len(seed)))[:FRAME]


def write_large_instance(path: Path, frames: int, **changes: object) -> LargeInstance:
    """A native multi-frame CT of ``frames`` MiB of pixel data at ``path``,
    with the PHI markers in its header; ``changes`` set or (``None``) delete attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI_NAME, PHI_ID, "19600101"
    ds.AccessionNumber, ds.StudyDate, ds.Modality = "ACCPHI42", "20240102", "CT"
    ds.StudyDescription = "large instance test"
    ds.InstitutionName = "LARGEPHI HOSPITAL"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 33.3
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        ds.save_as(out, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR: tag, VR, two reserved bytes, 32-bit length
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frames * FRAME).to_bytes(4, "little"))
        for number in range(frames):
            frame = _frame(number)
            digest.update(frame)
            out.write(frame)
    return LargeInstance(path, str(ds.SOPInstanceUID), digest.hexdigest(), path.stat().st_size)


def peak_rss(pid: int) -> int:
    """The peak resident set size of ``pid`` so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def stored_blob(blob_root: Path, size_at_least: int) -> Path:
    """The one blob of at least ``size_at_least`` bytes stored most recently."""
    blobs = [p for p in blob_root.glob("??/??/*.dcm") if p.stat().st_size >= size_at_least]
    assert blobs, f"no blob of {size_at_least} bytes or more under {blob_root}"
    return max(blobs, key=lambda p: p.stat().st_mtime)


def blob_header_and_pixel_sha256(blob: Path) -> tuple[Dataset, str]:
    """The stored file's header (pixel data not read) and the sha256 of its pixel data."""
    ds = dcmread(blob, defer_size=1 << 20)
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    digest = hashlib.sha256()
    with blob.open("rb") as stream:
        stream.seek(element.value_tell)
        left = element.length
        while left:
            chunk = stream.read(min(_CHUNK, left))
            assert chunk, "the blob ends inside its pixel data"
            digest.update(chunk)
            left -= len(chunk)
    return ds, digest.hexdigest()
