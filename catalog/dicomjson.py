"""DICOM JSON (PS3.18 F.2) of a stored instance, computed once at ingest.

Bulk data (pixel data and other large binary values) is replaced by a ``BulkDataURI`` that is
a path relative to the DICOMweb root, always starting ``/studies/``; the DICOMweb door puts
its public base URL in front when it answers (see :data:`BULKDATA_URI_PREFIX`).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any, Final

from pydicom._dicom_dict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from catalog.elements import element_of, tag_of

BULKDATA_THRESHOLD = 1024
"""Binary values longer than this many bytes become a BulkDataURI instead of InlineBinary."""

BULKDATA_URI_PREFIX = '"BulkDataURI":"/'
"""How every stored BulkDataURI begins in the serialised JSON (compact separators)."""


def to_dicom_json(ds: Dataset, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Serialise ``ds`` (without file meta) as compact DICOM JSON with bulk data URIs."""
    base = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"
    return json.dumps(_dataset_json(ds, base), ensure_ascii=False, separators=(",", ":"))


def _dataset_json(ds: Dataset, path: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    little_endian = ds.original_encoding[1]
    for base_tag in sorted(ds.keys()):
        tag = f"{base_tag:08X}"
        raw = element_of(ds, base_tag)
        if isinstance(raw, RawDataElement):
            if raw.value is None and raw.length > BULKDATA_THRESHOLD:
                # deferred (a large instance's pixel data, left in the spool): not read here
                vr = _deferred_vr(raw, ds)
                if vr in _BULK_VRS:
                    result[tag] = {"vr": vr, "BulkDataURI": f"{path}/{tag}"}
                    continue
            fast = _raw_json(raw, little_endian)
            if fast is not None:
                result[tag] = fast
                continue
        element = ds[base_tag]
        element_path = f"{path}/{tag}"
        if element.VR == "SQ":
            items = [
                _dataset_json(item, f"{element_path}/{index}")
                for index, item in enumerate(element.value)
            ]
            result[tag] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            result[tag] = _element_json(element, element_path)
    return result


_BULK_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _deferred_vr(raw: RawDataElement, ds: Dataset) -> str | None:
    """The VR of a deferred element: as read, else its dictionary's, with pixel data's
    "OB or OW" (read implicitly) resolved as pydicom does for implicit VR (OW)."""
    if raw.VR:
        return str(raw.VR)
    entry = DicomDictionary.get(int(raw.tag))
    vr = entry[0] if entry else None
    return "OW" if vr == "OB or OW" and ds.original_encoding[0] else vr


def _raw_json(raw: RawDataElement, little_endian: bool | None) -> dict[str, Any] | None:
    """The JSON of a still-encoded element read straight from its bytes, or None.

    Covers the common case (numbers, and plain ASCII text of the VRs whose value is the text
    itself) exactly as pydicom would convert it; anything else (person names, binary, other
    character sets, odd values) returns None and takes pydicom's way. Converting every
    element of every instance through pydicom was the largest single cost of ingest.
    """
    vr = raw.VR or _dictionary_vr(int(raw.tag))
    value = raw.value
    if vr is None or not isinstance(value, bytes):
        return None
    if vr in _BINARY_NUMBERS:
        code, size = _BINARY_NUMBERS[vr]
        if little_endian is None or len(value) % size:
            return None
        count = len(value) // size
        numbers = struct.unpack(f"{'<' if little_endian else '>'}{count}{code}", value)
        return {"vr": vr, "Value": list(numbers)} if numbers else {"vr": vr}
    split = _TEXT_SPLIT.get(vr)
    if split is None or not value.isascii() or b"\x1b" in value:
        return None
    items = split(value.decode("ascii"))
    if vr in _NUMBER_STRINGS:
        pattern, number = _NUMBER_STRINGS[vr]
        if not all(pattern.fullmatch(item) for item in items):
            return None
        return {"vr": vr, "Value": [number(item) for item in items]}
    if items == [""]:
        return {"vr": vr}
    return {"vr": vr, "Value": items}


def raw_values(ds: Dataset, key: str | int) -> list[Any] | None:
    """The values of a still-encoded element as :func:`to_dicom_json` reads them.

    None when the element is absent, already converted, or needs pydicom to convert it.
    """
    raw = ds.get_item(tag_of(key))
    if not isinstance(raw, RawDataElement):
        return None
    read = _raw_json(raw, ds.original_encoding[1])
    return None if read is None else read.get("Value", [])


def _dictionary_vr(tag: int) -> str | None:
    """The VR of an implicitly encoded element, if the dictionary gives exactly one."""
    entry = DicomDictionary.get(tag)
    return entry[0] if entry and len(entry[0]) == 2 else None


def _split_rstripped(text: str) -> list[str]:
    return text.rstrip(" \0").split("\\")


_BINARY_NUMBERS: Final = {
    vr: (code, struct.calcsize("<" + code))
    for vr, code in (
        ("US", "H"),
        ("SS", "h"),
        ("UL", "L"),
        ("SL", "l"),
        ("UV", "Q"),
        ("SV", "q"),
        ("FL", "f"),
        ("FD", "d"),
    )
}
# How pydicom splits and trims each VR's text (pydicom.values), for the VRs read here.
_TEXT_SPLIT: Final[dict[str, Callable[[str], list[str]]]] = {
    "AE": lambda text: [item.strip() for item in text.split("\\")],
    "AS": _split_rstripped,
    "CS": _split_rstripped,
    "DA": _split_rstripped,
    "DT": _split_rstripped,
    "TM": _split_rstripped,
    "UI": _split_rstripped,
    "IS": _split_rstripped,
    "DS": lambda text: _split_rstripped(text.strip()),
    "LO": lambda text: [item.rstrip("\0 ") for item in text.split("\\")],
    "SH": lambda text: [item.rstrip("\0 ") for item in text.split("\\")],
    "UC": lambda text: [item.rstrip("\0 ") for item in text.split("\\")],
    "LT": lambda text: [text.rstrip("\0 ")],
    "ST": lambda text: [text.rstrip("\0 ")],
    "UT": lambda text: [text.rstrip("\0 ")],
}
_NUMBER_STRINGS: Final[dict[str, tuple[re.Pattern[str], Callable[[str], float | int]]]] = {
    "IS": (re.compile(r"(?<! ) *+[+-]?[0-9]++ *+"), int),
    "DS": (
        re.compile(r"(?<! ) *+[+-]?([0-9]++\.?+[0-9]*+|\.[0-9]++)([eE][+-]?[0-9]++)? *+"),
        float,
    ),
}


def _element_json(element: DataElement, uri: str) -> dict[str, Any]:
    value = element.value
    if element.VR in _PLAIN_TEXT_VRS and (value is None or type(value) in _PLAIN_TEXT_TYPES):
        # one text value, as de-identification sets dozens: what pydicom's to_json_dict
        # gives it, without its several calls per element
        return {"vr": element.VR, "Value": [value]} if value else {"vr": element.VR}

    def bulk_uri(_: DataElement) -> str:
        return uri

    try:
        converted: dict[str, Any] = element.to_json_dict(
            bulk_data_element_handler=bulk_uri, bulk_data_threshold=BULKDATA_THRESHOLD
        )
    except (ValueError, TypeError, OverflowError):
        # A value that does not fit its VR (e.g. IS "abc"): keep the attribute, drop the
        # unusable value, as the file itself still holds it.
        return {"vr": element.VR}
    return converted


_PLAIN_TEXT_VRS: Final = frozenset(_TEXT_SPLIT) - frozenset(_NUMBER_STRINGS)
"""The VRs whose JSON value is the text itself (numbers and person names are converted)."""
_PLAIN_TEXT_TYPES: Final = (str, UID)
