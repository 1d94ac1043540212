"""Review of quarantined instances: release one into the index, or discard it."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from io import BytesIO

from pydicom import dcmread

from catalog import CatalogWriter, IndexOutcome, extract, to_dicom_json
from catalog.quarantine import find_held, forget
from storage import BlobRef, BlobStore


class ReviewError(LookupError):
    """No quarantined instance has that UID."""


def release(catalog: CatalogWriter, blobs: BlobStore, sop_instance_uid: str) -> IndexOutcome:
    """Index a quarantined instance (as ingest would have), then drop its quarantine row.

    Idempotent: after a crash between the two steps, releasing again finds it indexed.
    """
    held = find_held(catalog.db, sop_instance_uid)
    if held is None:
        raise ReviewError(f"no quarantined instance {sop_instance_uid}")
    with blobs.open(held.blob_key) as stream:
        data = stream.read()
    ds = dcmread(BytesIO(data))
    study, series, sop = (
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
    )
    record = extract(ds, to_dicom_json(ds, study, series, sop))
    record = replace(
        record,
        instance=replace(record.instance, deid_method=held.method, deid_flag=held.reason),
    )
    blob = BlobRef(key=held.blob_key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    indexed = catalog.index(record, blob, door="review", aet=None)
    if indexed.obsolete_blob_key and indexed.obsolete_blob_key != held.blob_key:
        blobs.remove(indexed.obsolete_blob_key)
    forget(catalog.db, sop_instance_uid)
    return indexed.outcome


def discard(catalog: CatalogWriter, blobs: BlobStore, sop_instance_uid: str) -> None:
    """Remove a quarantined instance: its row first, then its blob."""
    held = find_held(catalog.db, sop_instance_uid)
    if held is None:
        raise ReviewError(f"no quarantined instance {sop_instance_uid}")
    forget(catalog.db, sop_instance_uid)
    blobs.remove(held.blob_key)
