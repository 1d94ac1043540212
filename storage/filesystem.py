"""Filesystem blob store: ``<root>/ab/cd/<uuid>.dcm``, written atomically and fsynced.

Keys are random UUIDs, never derived from what a sender put in the file, and are spread over
two levels of 256 hash-prefixed folders so that tens of millions of blobs keep every folder
small (about 150 entries per folder at 10 million blobs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from storage.base import BlobInfo, BlobNotFoundError, BlobRef, StorageError

_KEY = re.compile(r"^[0-9a-f]{32}$")
_SUFFIX = ".dcm"
TEMP_PREFIX = ".tmp-"


class FilesystemBlobStore:
    """A :class:`storage.BlobStore` on a local or network filesystem.

    Parameters
    ----------
    root
        The folder that holds the blobs; created if missing.
    fsync
        Flush each blob and its folder entry to the device before ``put`` returns. Without
        it a power loss can lose acknowledged instances; only tests should turn it off.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        """The file of ``key``; refuses anything that is not one of our keys."""
        if not _KEY.match(key):
            raise BlobNotFoundError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:4] / f"{key}{_SUFFIX}"

    def put(self, data: bytes) -> BlobRef:
        return self.put_stream((data,))

    def put_stream(self, chunks: Iterable[bytes]) -> BlobRef:
        key = uuid.uuid4().hex
        target = self.path_of(key)
        temp = target.with_name(f"{TEMP_PREFIX}{key}")
        digest = hashlib.sha256()
        size = 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            temp.rename(target)
            if self.fsync:
                _fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise StorageError(exc.errno, f"cannot write blob: {exc.strerror}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return BlobRef(key=key, sha256=digest.hexdigest(), size=size)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.path_of(key).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {key}") from exc

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(key).unlink()

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def stat(self, key: str) -> BlobInfo:
        try:
            info = self.path_of(key).stat()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {key}") from exc
        return BlobInfo(size=info.st_size, modified=info.st_mtime)

    def keys(self, prefix: str = "") -> Iterator[str]:
        if not re.fullmatch(r"[0-9a-f]{0,32}", prefix):
            return
        first = prefix[:2].ljust(2, "?")
        second = prefix[2:4].ljust(2, "?")
        for path in self.root.glob(f"{first}/{second}/{prefix}*{_SUFFIX}"):
            yield path.name[: -len(_SUFFIX)]

    def stale_temporaries(self, older_than: float) -> Iterator[str]:
        limit = time.time() - older_than
        for path in self.root.glob(f"??/??/{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    yield str(path.relative_to(self.root))

    def remove_temporary(self, name: str) -> None:
        path = self.root / name
        if path.parent.parent.parent != self.root or not path.name.startswith(TEMP_PREFIX):
            raise BlobNotFoundError(f"not a temporary file of this store: {name!r}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX needs the folder itself fsynced)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
