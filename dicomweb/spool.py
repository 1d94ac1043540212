"""An encrypted spool file for request bodies that are not yet de-identified.

A STOW-RS body can be far larger than memory should hold, but what it holds has not been
de-identified yet, so it must not reach the disk readable. The spool is an unnamed temporary
file (``O_TMPFILE`` where the file system has it, else removed as soon as it is made: no
name in the folder, gone when closed or when the process dies) whose content is AES-256-CTR
ciphertext under a key made for this one spool and kept only in memory. What a crash leaves
on the disk's blocks cannot be read. CTR mode lets any byte range be decrypted on its own,
so parts are read back one at a time. (No authentication tag: the file lives as long as one
request, unnamed, in a folder of the node's own.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 16


class EncryptedSpool:
    """Write once from the start, then read any range; close (or ``with``) to delete."""

    def __init__(self, folder: Path | None = None) -> None:
        if folder is not None:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file: BinaryIO = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed in close()
        self._key = os.urandom(32)
        self._nonce = int.from_bytes(os.urandom(_BLOCK), "big")
        self._encryptor = self._cipher(0).encryptor()
        self.size = 0

    def _cipher(self, block: int) -> Cipher[modes.CTR]:
        counter = (self._nonce + block) % (1 << 128)
        return Cipher(algorithms.AES(self._key), modes.CTR(counter.to_bytes(_BLOCK, "big")))

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (encrypted) at the end."""
        self._file.write(self._encryptor.update(data))
        self.size += len(data)

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

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EncryptedSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
