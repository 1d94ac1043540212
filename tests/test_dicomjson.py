"""DICOM JSON and indexed attributes read straight from encoded bytes are exactly what
pydicom converts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from catalog import dicomjson, extract, to_dicom_json
from catalog.elements import tag_of
from config import DeidSettings
from deid import ProfileDeidentifier, Pseudonymizer
from tests.dicom_bytes import PYDICOM_SAMPLES, part10
from tests.synthetic import SyntheticSpec, generate, generate_transfer_syntax_variants


def odd_values() -> bytes:
    """Values whose padding, emptiness or number format pydicom treats in its own way."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImageType = "ORIGINAL\\PRIMARY\\"  # an empty last value
    ds.StationName = "  STATION  "
    ds.InstanceNumber = " 7"
    ds.AcquisitionNumber = "1.0"  # an IS pydicom accepts, not a plain integer
    ds.SliceThickness = " 1.50 "
    ds.PixelSpacing = "1e-1\\.5"
    ds.WindowCenter = "NaN"
    ds.ImageComments = "a\\b with a backslash and trailing spaces   "
    ds.StudyDescription = ""
    ds.SeriesDescription = "BRAIN\\\\AXIAL "  # an empty value in the middle
    ds.RetrieveAETitle = " AE1 \\ AE2"
    ds.add_new(0x00181210, "SH", "K\\")  # ConvolutionKernel
    ds.add_new(0x00280106, "US", 3)  # SmallestImagePixelValue, "US or SS" in the dictionary
    ds.add_new(0x00181149, "IS", "10\\20")
    return part10(ds)


def _sources(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    for name in PYDICOM_SAMPLES:
        yield name, Path(get_testdata_file(name)).read_bytes()
    for path in get_charset_files():
        raw = Path(path).read_bytes()
        if raw[128:132] == b"DICM":  # a few samples are bare data sets
            yield Path(path).name, raw
    for uid, path in generate_transfer_syntax_variants(tmp_path / "variants").items():
        yield uid, path.read_bytes()
    for path in generate(tmp_path / "synthetic", SyntheticSpec(patients=1, ct_slices=2)).files:
        yield path.name, path.read_bytes()
    yield "odd values", odd_values()
    implicit = dcmread(BytesIO(odd_values()))
    implicit.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    yield "odd values, implicit VR", part10(implicit)


def converted(ds: Dataset) -> Dataset:
    """``ds`` with every element converted by pydicom (iterating a data set converts it)."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                converted(item)
    return ds


def as_json(ds: Dataset) -> Any:
    return json.loads(to_dicom_json(ds, "1.2", "1.2.3", "1.2.3.4"))


def test_json_from_bytes_equals_pydicoms_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    through_pydicom: list[int] = []
    original = dicomjson._element_json

    def counting(element: Any, uri: str) -> dict[str, Any]:
        through_pydicom.append(element.tag)
        return original(element, uri)

    monkeypatch.setattr(dicomjson, "_element_json", counting)
    deidentifier = ProfileDeidentifier(
        DeidSettings(burned_in_policy="accept_flagged"), Pseudonymizer(b"k" * 32), vault=None
    )
    checked = elements = 0
    for name, raw in _sources(tmp_path):
        for deidentify in (False, True):
            fast, slow = dcmread(BytesIO(raw)), dcmread(BytesIO(raw))
            if deidentify:
                deidentifier.deidentify(fast)
                deidentifier.deidentify(slow)
            expected = as_json(converted(slow))
            through_pydicom.clear()
            assert as_json(fast) == expected, (name, deidentify)
            assert to_dicom_json(fast, "1", "2", "3") == to_dicom_json(slow, "1", "2", "3")
            if "SOPInstanceUID" in slow and "StudyInstanceUID" in slow:
                # the indexed attributes too
                fresh = dcmread(BytesIO(raw))
                if deidentify:
                    deidentifier.deidentify(fresh)
                assert extract(fresh, "{}") == extract(slow, "{}"), (name, deidentify)
            elements += len(expected)
            checked += 1
    assert checked > 50
    # the point of it: most elements never go through pydicom's conversion
    through_pydicom.clear()
    ct = dcmread(BytesIO(Path(get_testdata_file("CT_small.dcm")).read_bytes()))
    as_json(ct)
    assert len(through_pydicom) < len(ct) / 3


def test_text_elements_set_or_converted_are_what_pydicom_gives_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text element de-identification set (or pydicom converted) skips pydicom's
    ``to_json_dict``, with the same JSON."""
    original = DataElement.to_json_dict
    deidentifier = ProfileDeidentifier(
        DeidSettings(burned_in_policy="accept_flagged"), Pseudonymizer(b"k" * 32), vault=None
    )
    checked = 0
    for name, raw in _sources(tmp_path):
        for deidentify in (False, True):
            ds = dcmread(BytesIO(raw))
            if deidentify:
                deidentifier.deidentify(ds)
            for element in converted(ds).iterall():
                if element.VR in dicomjson._PLAIN_TEXT_VRS:
                    expected = original(element, lambda _: "u", dicomjson.BULKDATA_THRESHOLD)
                    assert dicomjson._element_json(element, "u") == expected, (name, element)
                    checked += 1
    assert checked > 1000
    through_pydicom: list[str] = []

    def counting(element: DataElement, *args: Any, **kwargs: Any) -> dict[str, Any]:
        through_pydicom.append(element.VR)
        return original(element, *args, **kwargs)

    monkeypatch.setattr(DataElement, "to_json_dict", counting)
    ct = dcmread(BytesIO(Path(get_testdata_file("CT_small.dcm")).read_bytes()))
    deidentifier.deidentify(ct)
    as_json(ct)
    assert not dicomjson._PLAIN_TEXT_VRS.intersection(through_pydicom)


def test_keywords_are_looked_up_without_pydicoms_tag_parsing() -> None:
    assert tag_of("PatientID") == 0x00100020
    assert tag_of(0x00100020) == 0x00100020
    assert tag_of("00100020") == "00100020"  # not a keyword: pydicom reads it as hex
    assert tag_of("NotAKeyword") == "NotAKeyword"  # pydicom's own error then
