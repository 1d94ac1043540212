"""Association slots shared by the DICOM worker processes of one node, so that
``max_associations`` and the per-AE limits of ``allowed_calling_aets`` count the node's
associations, not one process's.

A table in shared memory has one row per worker: its open associations, in total and per
limited calling AE title. A worker rewrites its own row from its own associations (under the
table's lock, when it admits one and whenever one ends) and adds the other rows to decide;
the main process clears the row of a worker that died.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.context import SpawnContext
from multiprocessing.sharedctypes import SynchronizedArray

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 2.0
"""Seconds to wait for the table's lock; past it (a worker killed while holding it) the
worker decides on its own associations alone, and says so."""


class SharedSlots:
    """The table; pass it to each worker, which calls :meth:`for_worker` with its slot."""

    def __init__(self, context: SpawnContext, workers: int, titles: Sequence[str]) -> None:
        self.titles = tuple(titles)
        self._width = 1 + len(self.titles)
        self._table: SynchronizedArray[int] = context.Array("i", workers * self._width)
        self.slot = -1

    def for_worker(self, slot: int) -> SharedSlots:
        self.slot = slot
        return self

    @contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the table's lock; yields False when it could not be had in time."""
        lock = self._table.get_lock()
        if not lock.acquire(timeout=LOCK_TIMEOUT):
            log.error("association table locked for %g s: counting this worker only", LOCK_TIMEOUT)
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def others(self) -> tuple[int, dict[str, int]]:
        """(associations, per limited AE title) of the other workers; under :meth:`locked`."""
        table = self._table[:]
        total, by_title = 0, dict.fromkeys(self.titles, 0)
        for row in range(len(table) // self._width):
            if row == self.slot:
                continue
            start = row * self._width
            total += table[start]
            for offset, title in enumerate(self.titles, start=1):
                by_title[title] += table[start + offset]
        return total, by_title

    def publish(self, titles: Sequence[str]) -> None:
        """Write this worker's row: the calling AE titles of its open associations; under
        :meth:`locked`."""
        start = self.slot * self._width
        row = [len(titles), *(titles.count(title) for title in self.titles)]
        self._table[start : start + self._width] = row

    def clear(self, slot: int) -> None:
        """Free the slots of a worker that is gone (the main process)."""
        with self.locked():
            self._table.get_obj()[slot * self._width : (slot + 1) * self._width] = [0] * self._width
