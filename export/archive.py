"""A zip archive written while it is sent: chunks go out as soon as they are compressed.

:class:`ZipStream` gives the standard library's ``zipfile`` a write-only sink and hands over
what accumulated after every chunk of input, so the archive is never in memory (only the
chunk being written is) nor in a temporary file. Without a seekable sink, ``zipfile`` writes
each entry's sizes and CRC in a data descriptor after its data, and ZIP64 records when the
archive grows past 4 GiB.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import BinaryIO, cast

CHUNK = 1 << 20
_STORED_SUFFIXES = (".dcm", ".png", ".gz", ".parquet")


class _Sink:
    """A write-only file that keeps what was written until it is taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class ZipStream:
    """Build a zip entry by entry; every method yields the archive's next bytes."""

    def __init__(self, date_time: tuple[int, int, int, int, int, int]) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(cast(BinaryIO, self._sink), "w", allowZip64=True)
        self.date_time = date_time

    def add_bytes(self, name: str, data: bytes) -> Iterator[bytes]:
        with self._open(name) as entry:
            for start in range(0, len(data), CHUNK):
                entry.write(data[start : start + CHUNK])
                yield self._sink.take()
        yield self._sink.take()

    def add_stream(self, name: str, source: BinaryIO) -> Iterator[bytes]:
        with self._open(name) as entry:
            while chunk := source.read(CHUNK):
                entry.write(chunk)
                yield self._sink.take()
        yield self._sink.take()

    def close(self) -> Iterator[bytes]:
        self._zip.close()
        yield self._sink.take()

    def _open(self, name: str) -> BinaryIO:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.external_attr = 0o644 << 16
        # images and compressed files gain little from deflate; text manifests gain a lot
        stored = name.endswith(_STORED_SUFFIXES)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        return cast(BinaryIO, self._zip.open(info, "w", force_zip64=True))
