"""The node's audit trail: doors record events without waiting for the catalog.

:meth:`AuditTrail.record` puts an event on a bounded in-memory queue and returns; one thread
writes what has queued in one transaction (a QIDO answer or a C-STORE does not wait for an
audit row). Events that must commit with what they record (re-identification, quarantine
review, cohorts, exports) are written in their own transaction by
:func:`catalog.audit.record_audit` instead.

Events of one kind that come in bursts (each instance of a C-STORE association, each frame
a viewer fetches) are *aggregated*: the same action by the same caller from the same place
on the same studies within ``window`` seconds is one event whose ``detail`` counts add up,
as dcm4chee aggregates its audit messages.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import replace

from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from catalog.audit import AuditRecord, append_audit
from catalog.db import Database
from catalog.models import utcnow

log = logging.getLogger("pacsnode.audit")

AUDIT_EVENTS = Counter(
    "pacsnode_audit_events", "Audit events recorded, by action and outcome", ["action", "outcome"]
)
AUDIT_DROPPED = Counter(
    "pacsnode_audit_events_dropped",
    "Audit events lost because the catalog could not take them before the queue filled",
)

_BATCH = 500
_AggregateKey = tuple[str, str, str, str, str, str, tuple[str, ...]]


class AuditTrail:
    """Appends events to the catalog from a background thread."""

    def __init__(self, db: Database, *, window: float = 10.0, max_queue: int = 100_000) -> None:
        self.db = db
        self.window = window
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(max_queue)
        self._open: dict[_AggregateKey, tuple[float, AuditRecord]] = {}
        self._pending = 0
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._thread.start()

    def record(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "ok",
        door: str,
        remote: str = "",
        target: str = "",
        studies: Iterable[str] = (),
        detail: dict[str, object] | None = None,
        aggregate: bool = False,
    ) -> None:
        """Queue one event (never blocks; a full queue drops it, counted and logged).

        With ``aggregate``, an event equal to an open one but for its ``detail`` adds its
        numbers to it (``detail`` then holds counts only)."""
        row = AuditRecord(
            utcnow(),
            actor,
            action,
            outcome,
            door,
            remote,
            target,
            tuple(sorted(set(studies))),
            detail or {},
        )
        AUDIT_EVENTS.labels(action, outcome).inc()
        if aggregate:
            key = (action, actor, outcome, door, remote, target, row.studies)
            with self._lock:
                opened = self._open.get(key)
                if opened is None:
                    self._pending += 1
                    self._open[key] = (time.monotonic(), row)
                else:
                    self._open[key] = (opened[0], _add_counts(opened[1], detail or {}))
            return
        with self._lock:
            self._pending += 1
        self._put(row)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every event recorded so far, aggregates too, and wait until they are in the
        catalog (tests, shutdown)."""
        self._close_aggregates(all_of_them=True)
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is recorded, then stop the thread."""
        self._close_aggregates(all_of_them=True)
        self._queue.put(None)
        self._thread.join(timeout)

    def _put(self, row: AuditRecord) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._done(1)
            AUDIT_DROPPED.inc()
            log.error("audit queue full: a %s event of %s is lost", row.action, row.actor)

    def _close_aggregates(self, *, all_of_them: bool) -> None:
        """Queue the aggregated events whose window has passed (or all)."""
        deadline = time.monotonic() - self.window
        with self._lock:
            closed = [
                key for key, (opened, _) in self._open.items() if all_of_them or opened < deadline
            ]
            rows = [self._open.pop(key)[1] for key in closed]
        for row in rows:
            self._put(row)

    def _run(self) -> None:
        tick = min(1.0, self.window / 2)
        while True:
            try:
                first = self._queue.get(timeout=tick)
            except queue.Empty:
                self._close_aggregates(all_of_them=False)
                continue
            batch = [first] if first is not None else []
            stop = first is None
            while not stop and len(batch) < _BATCH:
                try:
                    row = self._queue.get_nowait()
                except queue.Empty:
                    break
                if row is None:
                    stop = True
                else:
                    batch.append(row)
            if batch:
                self._write(batch)
                self._done(len(batch))
            self._close_aggregates(all_of_them=False)
            if stop:
                return

    def _done(self, count: int) -> None:
        with self._lock:
            self._pending -= count
            self._lock.notify_all()

    def _write(self, batch: list[AuditRecord]) -> None:
        """Write ``batch``, retrying while the catalog is unavailable (up to a minute)."""
        for attempt in range(8):
            try:
                with self.db.write() as session:
                    append_audit(session, batch)
                return
            except SQLAlchemyError as exc:
                log.warning("audit events not written yet (%s); retrying", type(exc).__name__)
                time.sleep(min(0.25 * 2**attempt, 15.0))
        AUDIT_DROPPED.inc(len(batch))
        log.error("%d audit events lost: the catalog refused them for a minute", len(batch))


def _add_counts(row: AuditRecord, more: dict[str, object]) -> AuditRecord:
    detail = dict(row.detail or {})
    for name, value in more.items():
        current = detail.get(name, 0)
        if isinstance(value, int) and isinstance(current, int):
            detail[name] = current + value
    return replace(row, detail=detail)
