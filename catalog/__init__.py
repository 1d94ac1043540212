"""The catalog: SQLAlchemy models of the DICOM hierarchy, sessions, and the index writer."""

from catalog.attributes import InstanceRecord, extract
from catalog.db import CatalogUnavailableError, Database
from catalog.dicomjson import BULKDATA_URI_PREFIX, to_dicom_json
from catalog.locate import RetrieveKeys, StoredInstance, locate_keys
from catalog.stats import CatalogStats, catalog_stats
from catalog.writer import CatalogWriter, Existing, IndexOutcome, IndexResult, StoredBlob

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
