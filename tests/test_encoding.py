"""The splice writer gives exactly the bytes pydicom's own writer gives, only faster."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from config import DeidSettings
from deid import ProfileDeidentifier, Pseudonymizer
from ingest import encoding
from ingest.pipeline import parse, validate
from tests.dicom_bytes import PYDICOM_SAMPLES
from tests.synthetic import SyntheticSpec, generate, generate_transfer_syntax_variants

KEY = b"k" * 32
SETTINGS = DeidSettings(burned_in_policy="accept_flagged")


def _sources(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    for name in PYDICOM_SAMPLES:
        yield name, Path(get_testdata_file(name)).read_bytes()
    for uid, path in generate_transfer_syntax_variants(tmp_path / "variants").items():
        yield uid, path.read_bytes()
    for path in generate(tmp_path / "synthetic", SyntheticSpec(patients=1, ct_slices=2)).files:
        yield path.name, path.read_bytes()


def _deidentified(raw: bytes) -> Dataset:
    ds = dcmread(BytesIO(raw))
    ProfileDeidentifier(SETTINGS, Pseudonymizer(KEY), vault=None).deidentify(ds)
    return ds


def _pydicom_written(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_spliced_files_equal_what_pydicom_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_one_by_one: list[int] = []
    original_writer = encoding.write_data_element

    def counting_writer(out: Any, element: Any, *args: Any) -> None:
        written_one_by_one.append(element.tag)
        original_writer(out, element, *args)

    monkeypatch.setattr(encoding, "write_data_element", counting_writer)
    checked = elements = copied = sequences = sequences_by_pydicom = 0
    for name, raw in _sources(tmp_path):
        ds = _deidentified(raw)
        written_one_by_one.clear()
        spliced = encoding.encode(ds, raw)
        assert spliced == _pydicom_written(_deidentified(raw)), name
        assert spliced != raw, name  # de-identification changed something
        if ds.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
            # the point of it: pixel data and most other elements are copied as they came
            assert 0x7FE00010 not in written_one_by_one, name
            elements += len(ds)
            copied += len(ds) - len(written_one_by_one)
            # and sequences (de-identification converts each) keep their items' raw bytes
            in_sequences = {tag for tag in ds.keys() if ds[tag].VR == "SQ"}  # noqa: SIM118
            sequences += len(in_sequences)
            sequences_by_pydicom += len(in_sequences.intersection(written_one_by_one))
        checked += 1
    assert checked > 20
    assert copied > elements / 2
    assert sequences > 20
    assert sequences_by_pydicom < sequences / 10


def test_a_stream_that_does_not_match_the_data_set_is_not_copied() -> None:
    """Offsets into another stream would copy foreign bytes; the tag check refuses them."""
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = _deidentified(raw)
    expected = _pydicom_written(_deidentified(raw))
    assert encoding.encode(ds, b"\0" * len(raw)) == expected


@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm"])
def test_without_the_stream_it_is_pydicoms_writer(name: str) -> None:
    raw = Path(get_testdata_file(name)).read_bytes()
    assert encoding.encode(_deidentified(raw)) == _pydicom_written(_deidentified(raw))


def _every_pydicom_file() -> list[Path]:
    return sorted(Path(name) for name in get_testdata_files() if name.endswith(".dcm"))


def test_every_pydicom_file_reads_back_whole_after_deidentification() -> None:
    """What ingest writes must read back with every element it kept, whatever the sender's
    encoding mistakes (``SC_rgb_jpeg.dcm``: file meta says explicit VR, the data set is
    implicit; pydicom reads it implicitly but reports the file meta's encoding)."""
    checked = 0
    for path in _every_pydicom_file():
        raw = path.read_bytes()
        try:
            validate(parse(raw), None)
            ds = _deidentified(raw)
        except Exception:
            continue  # not a file ingest accepts
        kept = {tag for tag in ds.keys() if tag.element != 0}  # noqa: SIM118
        stored = dcmread(BytesIO(encoding.encode(ds, raw)))
        assert {tag for tag in stored.keys() if tag.element != 0} == kept, path.name  # noqa: SIM118
        if "PixelData" in ds:
            assert stored.PixelData == ds.PixelData, path.name
        checked += 1
    assert checked > 50


_SIMPLE = [
    (0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.2"),
    (0x00080018, "UI", "2.25.1234"),
    (0x00080008, "CS", ["ORIGINAL", "PRIMARY", "AXIAL"]),
    (0x00080020, "DA", "20240101"),
    (0x0008002A, "DT", "20240101120000.5"),
    (0x00080030, "TM", "1200"),
    (0x00080054, "AE", "AE12345"),
    (0x00101010, "AS", "042Y"),
    (0x00081030, "LO", "CT CHEST"),
    (0x00081030, "LO", ["A", "BC"]),
    (0x00080050, "SH", "A123"),
    (0x00204000, "LT", "a comment\\with a backslash"),
    (0x00081190, "UR", "urn:x"),
    (0x00081030, "LO", ""),
    (0x00081030, "LO", None),
    (0x00080020, "DA", None),
    (0x00280010, "US", 512),
    (0x00280106, "SS", -3),
    (0x00186020, "SL", -70000),
    (0x00280000, "UL", 70000),
    (0x00189087, "FD", 1000.5),
    (0x00189087, "FD", 3),
    (0x00189064, "FL", 0.25),
]


@pytest.mark.parametrize("little, implicit", [(True, False), (True, True), (False, False)])
def test_simple_elements_are_written_as_pydicom_writes_them(little: bool, implicit: bool) -> None:
    """The common changed elements are written without pydicom's writer, to the same bytes."""
    from pydicom.dataelem import DataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    for tag, vr, value in _SIMPLE:
        element = DataElement(tag, vr, value)
        expected = DicomBytesIO()
        expected.is_little_endian, expected.is_implicit_VR = little, implicit
        write_data_element(expected, element, ["ISO_IR 192"])
        assert encoding._simple_element(element, little, implicit) == expected.getvalue(), (
            vr,
            value,
        )
    for vr, value in [("PN", "DOE^JOHN"), ("LO", "Müller"), ("DS", "1.5"), ("US", [1, 2])]:
        element = DataElement(0x00100010, vr, value)
        assert encoding._simple_element(element, little, implicit) is None
