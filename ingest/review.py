"""Review of quarantined instances: a release goes through the pipeline
(:meth:`ingest.Ingestor.release`); a discard removes the instance."""

from __future__ import annotations

from catalog import CatalogWriter
from catalog.quarantine import discarded, find_held
from ingest.model import ReviewError
from storage import BlobStore

__all__ = ["ReviewError", "discard"]


def discard(catalog: CatalogWriter, blobs: BlobStore, sop_instance_uid: str, *, actor: str) -> None:
    """Remove a quarantined instance ``actor`` reviewed: its row first (audited in the same
    transaction), then its blob."""
    held = find_held(catalog.db, sop_instance_uid)
    if held is None:
        raise ReviewError(f"no quarantined instance {sop_instance_uid}")
    discarded(catalog.db, sop_instance_uid, actor)
    blobs.remove(held.blob_key)
