"""Blob storage behind one interface (:class:`BlobStore`); the filesystem store is the default."""

from storage.base import BlobInfo, BlobNotFoundError, BlobRef, BlobStore, StorageError
from storage.filesystem import FilesystemBlobStore

__all__ = [
    "BlobInfo",
    "BlobNotFoundError",
    "BlobRef",
    "BlobStore",
    "FilesystemBlobStore",
    "StorageError",
]
