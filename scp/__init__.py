"""The DIMSE front door: a pynetdicom AE whose handlers call the ingest pipeline."""

from scp.ae import DicomServer, build_ae
from scp.status import C_STORE_STATUS, StoreStatus, store_response

__all__ = ["C_STORE_STATUS", "DicomServer", "StoreStatus", "build_ae", "store_response"]
