"""Spool files: bytes not yet de-identified, encrypted with a key that exists only in memory.

Every door that must hold more than memory should (a C-STORE or STOW-RS instance of a
gigabyte, a zip inside an import's zip) writes it here: AES-256 in CTR mode
(``cryptography``) under a key and nonce made for this one spool, so a crash leaves
ciphertext whose key is gone. CTR lets any byte range be decrypted on its own (a block's
counter is the nonce plus its number): written once from the start, read anywhere.

A spool made in a folder is a named file ``<host>_<pid>_<start>_<random>.spool`` (mode
0600), removed when the spool is closed. The name says which process owns it (its host, id
and start time, so a reused id is not mistaken for the owner): :func:`leftovers` lists the
files of this host's processes that are gone (a crash, ``kill -9``), which ``pacsnode
verify`` reports and removes; a folder shared by nodes on other hosts keeps theirs.
Without a folder the spool is an unnamed temporary file, gone with the process.
(No authentication tag: a spool lives as long as one transfer, in a folder of the node's own.)
"""

from __future__ import annotations

import io
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO, Final, cast

import psutil
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_BLOCK: Final = 16
_COUNTERS: Final = 1 << 128
CHUNK: Final = 1 << 20
"""Bytes decrypted at a time when a range is read in pieces."""
SUFFIX: Final = ".spool"
_NAME: Final = re.compile(r"^([A-Za-z0-9.-]+)_(\d+)_(\d+)_[0-9a-f]{32}\.spool$")
_HOST: Final = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _started(pid: int) -> int | None:
    """When process ``pid`` started (whole seconds since the epoch), None if it is gone."""
    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


_OWNER: Final = f"{_HOST}_{os.getpid()}_{_started(os.getpid())}"


def spool_path(folder: Path) -> Path:
    """A new spool file name in ``folder``, owned by this process."""
    return folder / f"{_OWNER}_{uuid.uuid4().hex}{SUFFIX}"


def leftovers(folder: Path) -> list[Path]:
    """Spool files in ``folder`` of this host's processes that are gone (left by a crash)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match is None or match[1] != _HOST:
            continue
        pid, started = int(match[2]), int(match[3])
        owner = _started(pid)
        if owner is None or abs(owner - started) > 1:
            found.append(path)
    return sorted(found)


class EncryptedSpool:
    """Write sequentially, read any range at any time; close (or ``with``) to delete.

    Parameters
    ----------
    folder
        Where the named spool file goes (created 0700 if missing); ``None``: an unnamed
        temporary file in the system's temporary folder.
    path
        The exact name to use in ``folder`` (from :func:`spool_path`), when the caller
        announced it before the spool was made.
    """

    def __init__(self, folder: Path | None = None, *, path: Path | None = None) -> None:
        self._key = os.urandom(32)
        self._nonce = int.from_bytes(os.urandom(_BLOCK), "big")
        self._encryptor = self._cipher(0).encryptor()
        self.size = 0
        self.path: Path | None = None
        if folder is None and path is None:
            self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            return
        target = path or spool_path(cast(Path, folder))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.path = target
        self._file = os.fdopen(fd, "r+b")  # closed in close()

    def _cipher(self, block: int) -> Cipher[modes.CTR]:
        counter = ((self._nonce + block) % _COUNTERS).to_bytes(_BLOCK, "big")
        return Cipher(algorithms.AES(self._key), modes.CTR(counter))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` (encrypted) at the end."""
        self._file.write(self._encryptor.update(data))
        self.size += len(data)
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        """The plaintext of ``length`` bytes from ``offset``.

        One buffer for the ciphertext and one for the plaintext, nothing in between: many
        medium-sized pieces would stay resident in the allocator's arenas after use.
        """
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("range outside the spool")
        self._file.flush()
        first = offset // _BLOCK
        skip = offset - first * _BLOCK
        ciphertext = bytearray(skip + length)
        view = memoryview(ciphertext)
        position = first * _BLOCK
        while view:
            count = os.preadv(self._file.fileno(), [view], position)
            if not count:
                raise OSError("the spool file is shorter than what was written to it")
            view = view[count:]
            position += count
        decryptor = self._cipher(first).decryptor()
        decryptor.update(memoryview(ciphertext)[:skip])
        return decryptor.update(memoryview(ciphertext)[skip:])

    def chunks(self, offset: int, length: int, size: int = CHUNK) -> Iterator[bytes]:
        """The plaintext of a range, ``size`` bytes at a time."""
        end = offset + length
        while offset < end:
            step = min(size, end - offset)
            yield self.read(offset, step)
            offset += step

    def reader(self, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A seekable binary file of the range (for pydicom, zipfile); the spool stays
        open as long as the reader is used."""
        if length is None:
            length = self.size - offset
        return cast(BinaryIO, _RangeReader(self, offset, length))

    def close(self) -> None:
        """Close and delete the file (again: nothing)."""
        self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> EncryptedSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


_WINDOW: Final = 64 * 1024


class _RangeReader(io.RawIOBase):
    """A range of a spool as a seekable, read-only file. (Not an ``io.BufferedReader``:
    pydicom takes one for a file it can open again by name.)"""

    def __init__(self, spool: EncryptedSpool, offset: int, length: int) -> None:
        super().__init__()
        if offset < 0 or length < 0 or offset + length > spool.size:
            raise ValueError("range outside the spool")
        self._spool, self._offset, self._length = spool, offset, length
        self._position = 0
        self._window = b""  # read ahead: pydicom reads a header a few bytes at a time
        self._window_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._length - self._position)
        if wanted <= 0:
            return 0
        if wanted >= _WINDOW:
            view[:wanted] = self._spool.read(self._offset + self._position, wanted)
        else:
            start = self._position - self._window_start
            if start < 0 or start + wanted > len(self._window):
                self._window_start = self._position
                ahead = min(_WINDOW, self._length - self._position)
                self._window = self._spool.read(self._offset + self._position, ahead)
                start = 0
            view[:wanted] = self._window[start : start + wanted]
        self._position += wanted
        return wanted
