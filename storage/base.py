"""The blob store interface: where the bytes of instances live, under keys we choose."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class BlobRef:
    """Where a blob was stored and what it holds."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BlobInfo:
    """Size and last modification time (seconds since the epoch) of a stored blob."""

    size: int
    modified: float


class BlobNotFoundError(LookupError):
    """No blob is stored under the key."""


class StorageError(OSError):
    """The blob could not be written (disk full, permissions, device error)."""


class BlobStore(Protocol):
    """A content store for instance files.

    Implementations write atomically: a blob is either completely there under its key or not
    there at all, and ``put`` returns only once the bytes are durable.
    """

    def put(self, data: bytes) -> BlobRef:
        """Store ``data`` under a new key; raise :class:`StorageError` if it cannot."""
        ...

    def put_stream(self, chunks: Iterable[bytes]) -> BlobRef:
        """Store the concatenation of ``chunks`` (a large instance, never whole in memory)
        under a new key, as :meth:`put` does. An exception raised by ``chunks`` stores
        nothing and is raised again."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open a stored blob for reading; raise :class:`BlobNotFoundError` if absent."""
        ...

    def remove(self, key: str) -> None:
        """Remove a blob; removing an absent key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""
        ...

    def stat(self, key: str) -> BlobInfo:
        """Size and age of a blob; raise :class:`BlobNotFoundError` if absent."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every stored key starting with ``prefix`` (for integrity scrubs), in no order."""
        ...

    def stale_temporaries(self, older_than: float) -> Iterator[str]:
        """Names of unfinished writes older than ``older_than`` seconds (left by a crash)."""
        ...

    def remove_temporary(self, name: str) -> None:
        """Remove an unfinished write found by :meth:`stale_temporaries`."""
        ...
