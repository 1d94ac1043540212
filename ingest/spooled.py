"""A large instance left in its encrypted spool, through the one pipeline in bounded memory.

The header is parsed with pydicom, which leaves every value longer than
:data:`DEFER_SIZE` in the spool (its deferred read: a header and an offset); the pipeline
de-identifies the header as it would any instance, the stored file is written by
:func:`ingest.encoding.encode_parts` (changed elements written, the rest copied from the
spool a chunk at a time) to :meth:`storage.BlobStore.put_stream`, and the content identity
reads deferred values from the spool too. Memory holds the header and a few chunks.

Encapsulated pixel data (undefined length) is given its extent by reading its item headers,
so it is copied through too. What cannot be copied as received (a deflated data set, one
re-encoded by de-identification) is read whole and encoded in memory, as a small instance
is: correct, not bounded.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from catalog.elements import is_deferred
from ingest.encoding import Part, encode, encode_parts
from ingest.identity import Deferred
from ingest.pipeline import parse_stream
from ingest.spool import EncryptedSpool
from storage import BlobRef, BlobStore

log = logging.getLogger(__name__)

DEFER_SIZE = 1 << 20
"""Values longer than this stay in the spool while the header is processed."""
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 8
_ITEM_HEADER = struct.Struct("<HHL")


class Spooled:
    """The Part 10 stream at ``offset`` (``length`` bytes, default: the rest) of ``spool``:
    :class:`ingest.pipeline.Received` for :meth:`ingest.Ingestor.accept_received`."""

    def __init__(self, spool: EncryptedSpool, offset: int = 0, length: int | None = None) -> None:
        self.spool = spool
        self.offset = offset
        self.length = spool.size - offset if length is None else length
        self._encapsulated: set[int] = set()
        """Offsets of encapsulated values given a defined length by :meth:`parse`."""

    @property
    def deferred(self) -> Deferred:
        return self._deferred

    def _deferred(self, element: RawDataElement) -> tuple[int, Iterable[bytes]]:
        # an encapsulated value's delimiter is not part of it (pydicom's raw value)
        length = element.length - (_ITEM if element.value_tell in self._encapsulated else 0)
        return length, self.spool.chunks(self.offset + element.value_tell, length)

    def parse(self) -> Dataset:
        # the reader stays with the data set: pydicom reads a deferred value from it if a
        # step asks for one
        reader = self.spool.reader(self.offset, self.length)
        dataset = parse_stream(reader, self.length, DEFER_SIZE)
        self._encapsulated = set()
        for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset converts elements)
            element = dataset.get_item(tag, keep_deferred=True)
            if is_deferred(element) and element.length == _UNDEFINED_LENGTH:
                end = self._items_end(element.value_tell)
                if end is not None:  # its extent, delimiter included, as a defined length
                    dataset[tag] = element._replace(length=end - element.value_tell)
                    self._encapsulated.add(element.value_tell)
        return dataset

    def _items_end(self, position: int) -> int | None:
        """Where the items of an encapsulated value starting at ``position`` end, their
        sequence delimiter included (reading only item headers); None if they do not."""
        while position + _ITEM <= self.length:
            group, number, length = _ITEM_HEADER.unpack(self.spool.read(self.offset + position, 8))
            position += _ITEM
            if (group, number) == (0xFFFE, 0xE0DD):
                return position
            if (group, number) != (0xFFFE, 0xE000) or length == _UNDEFINED_LENGTH:
                return None
            position += length
        return None

    def encode(self, dataset: Dataset, changed: bool) -> SpooledFile:
        if not changed:
            return SpooledFile(self, [(0, self.length)])
        parts = encode_parts(dataset, lambda at: self.spool.read(self.offset + at, 4))
        if parts is None:  # not copied as received: encoded in memory, as a small one is
            log.info("a spooled instance of %d bytes is encoded in memory", self.length)
            parts = [encode(dataset, self.spool.read(self.offset, self.length))]
        return SpooledFile(self, parts)


@dataclass(frozen=True)
class SpooledFile:
    """The file to store: written bytes and ranges of the spooled stream."""

    source: Spooled
    parts: list[Part]

    @property
    def size(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in self.parts)

    def store(self, blobs: BlobStore) -> BlobRef:
        return blobs.put_stream(self._chunks())

    def _chunks(self) -> Iterator[bytes]:
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
            else:
                start, end = part
                yield from self.source.spool.chunks(self.source.offset + start, end - start)
