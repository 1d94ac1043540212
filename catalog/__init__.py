"""The catalog: SQLAlchemy models of the DICOM hierarchy, sessions, and the index writer.

The names below are imported on first use (PEP 562), so that a command which only counts
(``pacsnode stats``) loads SQLAlchemy and not pydicom.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from catalog.attributes import InstanceRecord, extract
    from catalog.db import CatalogUnavailableError, Database
    from catalog.dicomjson import BULKDATA_URI_PREFIX, to_dicom_json
    from catalog.locate import RetrieveKeys, StoredInstance, locate_keys
    from catalog.stats import CatalogStats, catalog_stats
    from catalog.writer import CatalogWriter, Existing, IndexOutcome, IndexResult, StoredBlob

_WHERE = {
    "BULKDATA_URI_PREFIX": "catalog.dicomjson",
    "CatalogStats": "catalog.stats",
    "CatalogUnavailableError": "catalog.db",
    "CatalogWriter": "catalog.writer",
    "Database": "catalog.db",
    "Existing": "catalog.writer",
    "IndexOutcome": "catalog.writer",
    "IndexResult": "catalog.writer",
    "InstanceRecord": "catalog.attributes",
    "RetrieveKeys": "catalog.locate",
    "StoredBlob": "catalog.writer",
    "StoredInstance": "catalog.locate",
    "catalog_stats": "catalog.stats",
    "extract": "catalog.attributes",
    "locate_keys": "catalog.locate",
    "to_dicom_json": "catalog.dicomjson",
}

__all__ = [
    "BULKDATA_URI_PREFIX",
    "CatalogStats",
    "CatalogUnavailableError",
    "CatalogWriter",
    "Database",
    "Existing",
    "IndexOutcome",
    "IndexResult",
    "InstanceRecord",
    "RetrieveKeys",
    "StoredBlob",
    "StoredInstance",
    "catalog_stats",
    "extract",
    "locate_keys",
    "to_dicom_json",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'catalog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
