"""A blob write started while the pipeline still computes what it indexes.

On one association every C-STORE waits for the previous answer, so the write and its fsyncs
(milliseconds of waiting, the sha256 of the file: all outside the GIL) overlap the catalog
record and the content hash instead of following them. The index commit still waits for the
write: an instance is acknowledged only once both are durable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from storage import BlobRef, BlobStore, StorageError

_WRITERS: Final = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-write")


class EarlyBlob:
    """``store(blobs)`` (the file's own write into the store) running in a writer thread."""

    def __init__(self, blobs: BlobStore, store: Callable[[BlobStore], BlobRef]) -> None:
        self._blobs = blobs
        self._future = _WRITERS.submit(store, blobs)

    def result(self) -> BlobRef:
        """The stored blob, once durable; raises what ``put`` raised."""
        return self._future.result()

    def discard(self) -> None:
        """Wait for the write and remove what it stored (the pipeline did not keep it)."""
        try:
            ref = self._future.result()
        except Exception:  # nothing was stored (put removes its own temporary file)
            return
        with contextlib.suppress(StorageError, OSError):
            self._blobs.remove(ref.key)
