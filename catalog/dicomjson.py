"""DICOM JSON (PS3.18 F.2) of a stored instance, computed once at ingest.

Bulk data (pixel data and other large binary values) is replaced by a ``BulkDataURI`` that is
a path relative to the DICOMweb root, always starting ``/studies/``; the DICOMweb door puts
its public base URL in front when it answers (see :data:`BULKDATA_URI_PREFIX`).
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

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
    for element in ds:
        tag = f"{element.tag:08X}"
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


def _element_json(element: DataElement, uri: str) -> dict[str, Any]:
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
