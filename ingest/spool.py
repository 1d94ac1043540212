"""A temporary file that holds bytes not yet de-identified, encrypted with a key that exists
only in this process's memory.

Import reads a zip inside a zip from such a spool: :mod:`zipfile` needs to seek in an
archive, and a deflated member cannot seek (it would inflate from the start again for every
member), while holding the inner archive in memory is what a zip bomb wants. The spool is
AES-256 in CTR mode (``cryptography``): written once from the start, then read anywhere (a
block's counter is the nonce plus its number). The file is unlinked from its creation, and a
crash leaves ciphertext whose key is gone.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

_BLOCK: Final = 16
_COUNTERS: Final = 1 << 128


class EncryptedSpool(io.RawIOBase):
    """Write sequentially, then :meth:`rewind` and read with random access (seek, read)."""

    def __init__(self) -> None:
        super().__init__()
        self._key = os.urandom(32)
        self._nonce = int.from_bytes(os.urandom(_BLOCK), "big")
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the spool
        self._encryptor = self._cipher(0).encryptor()
        self._size = 0
        self._position = 0
        self._reading = False

    def _cipher(self, block: int) -> Cipher[modes.CTR]:
        counter = ((self._nonce + block) % _COUNTERS).to_bytes(_BLOCK, "big")
        return Cipher(algorithms.AES(self._key), modes.CTR(counter))

    def write(self, data: ReadableBuffer) -> int:
        if self._reading:
            raise io.UnsupportedOperation("the spool is read-only once rewound")
        plain = bytes(data)
        self._file.write(self._encryptor.update(plain))
        self._size += len(plain)
        return len(plain)

    def rewind(self) -> None:
        """End writing; reading starts at the beginning."""
        self._file.write(self._encryptor.finalize())
        self._file.flush()
        self._reading = True
        self._position = 0

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return not self._reading

    def seekable(self) -> bool:
        return self._reading

    def tell(self) -> int:
        return self._position if self._reading else self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._reading:
            raise io.UnsupportedOperation("rewind the spool before seeking")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        if not self._reading:
            raise io.UnsupportedOperation("rewind the spool before reading")
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._size - self._position)
        if wanted <= 0:
            return 0
        block, skip = divmod(self._position, _BLOCK)
        self._file.seek(block * _BLOCK)
        ciphertext = self._file.read(skip + wanted)
        plain = self._cipher(block).decryptor().update(ciphertext)[skip:]
        view[: len(plain)] = plain
        self._position += len(plain)
        return len(plain)

    def close(self) -> None:
        self._file.close()
        super().close()
