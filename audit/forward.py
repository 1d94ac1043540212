"""Send the audit trail on to a syslog collector, as DICOM audit messages.

The forwarder reads the catalog, not the doors: every event reaches the collector, also one
a command (``pacsnode reidentify``, ``pacsnode tokens ...``) wrote from another process. A
cursor in the catalog says how far the collector has received the trail; it moves only
past messages the sender has written to the collector, and the forwarder hands the sender
no more than half its queue, so a collector away for a day misses nothing: the events wait
in the catalog. On its first start the forwarder begins at the newest event
(``pacsnode audit export`` gives the older ones).

Nodes sharing a catalog share the cursor, so one node at a time forwards: the one holding
the ``audit_forward`` lease (:class:`catalog.jobs.Lease`, a run record renewed while it
forwards). A node that stops moves the cursor past what it sent, then gives the lease up;
another takes it over and goes on from the cursor. Only a node that dies (or loses the
catalog for longer than the lease) can leave messages sent but not counted, which its
successor sends again: at least once, never lost.

Event ids come from one sequence, but transactions (of other nodes, threads, commands)
commit in any order: event 101 may be readable before event 100. The forwarder stops at a
missing id and waits for it up to :data:`GAP_WAIT` seconds (a rolled-back transaction
leaves a gap for ever), so that the cursor never passes an event that is still coming.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta

from audit.events import outcome_of
from audit.syslog import SyslogSender, severity_for
from catalog.audit import (
    AuditFilter,
    AuditRecord,
    forward_cursor,
    move_forward_cursor,
    newest_audit_id,
    read_audit,
)
from catalog.db import Database
from catalog.jobs import Lease

log = logging.getLogger("pacsnode.audit")

_CURSOR = "syslog"
LEASE_NAME = "audit_forward"
GAP_WAIT = 10.0
"""Seconds to wait for a missing event id before passing it by."""
_BATCH = 200


class AuditForwarder:
    """Reads new events every ``poll`` seconds and hands them to ``sender``, while this
    node holds the forwarding lease (taken for dead after ``lease`` without renewal)."""

    def __init__(
        self,
        db: Database,
        sender: SyslogSender,
        render: Callable[[AuditRecord], bytes],
        *,
        queue_size: int,
        lease: timedelta,
        poll: float = 1.0,
    ) -> None:
        self.db = db
        self.lease = Lease(db, LEASE_NAME, lease)
        self.sender = sender
        self.render = render
        self.poll = poll
        self._room = max(1, queue_size // 2)
        self._handed: deque[tuple[int, bool]] = deque()
        """The events read and not yet written to the collector: (id, handed to the
        sender; ``False`` for one that could not be rendered, passed over at once)."""
        self._accounted = 0
        self._gaps: dict[int, float] = {}
        """First missing id of a gap before a readable event: when it was first seen."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading; send what was handed over (up to ``timeout``), keep the cursor."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sender.close(timeout)
        try:
            self._advance()
            self.lease.release("node stopped")
        except Exception as exc:  # the catalog away: the lease runs out by itself
            log.warning("audit forwarding lease not released (%s)", type(exc).__name__)

    def _run(self) -> None:
        last: int | None = None  # None: another node forwards
        while not self._stop.is_set():
            try:
                if self.lease.hold():
                    if last is None:
                        last = self._start_cursor()
                        log.info("audit forwarding from this node")
                    self._advance()
                    if len(self._handed) < self._room:
                        last = self._hand_over(last)
                elif last is not None:
                    last = None
                    self._stand_down()
            except Exception as exc:  # the catalog away: try again at the next poll
                log.warning("audit forwarding paused (%s)", type(exc).__name__)
            self._stop.wait(self.poll)

    def _stand_down(self) -> None:
        """The lease went to another node, which goes on from the cursor: what this one
        handed over still ends sent or dropped, and is no longer counted here."""
        self._accounted += sum(1 for _, handed in self._handed if handed)
        self._handed.clear()

    def _start_cursor(self) -> int:
        with self.db.write() as session:
            cursor = forward_cursor(session, _CURSOR)
            if cursor is None:
                cursor = newest_audit_id(session)
                move_forward_cursor(session, _CURSOR, cursor)
        return cursor

    def _hand_over(self, after: int) -> int:
        """Send the events after ``after`` (as many as there is room for); the last id."""
        with self.db.read() as session:
            events = read_audit(
                session,
                AuditFilter(after_id=after),
                limit=min(_BATCH, self._room - len(self._handed)),
                newest_first=False,
            )
        events = self._without_gaps(after, events)
        for event in events:
            assert event.id is not None
            try:
                message = self.render(event)
            except ValueError as exc:
                log.error("audit event %d not forwarded: %s", event.id, exc)
                self._handed.append((event.id, False))
                continue
            self.sender.send(message, event.at, severity_for(outcome_of(event.outcome)))
            self._handed.append((event.id, True))
        return max([after, *(event.id or 0 for event in events)])

    def _without_gaps(self, after: int, events: Sequence[AuditRecord]) -> list[AuditRecord]:
        """``events`` up to the first missing id, unless it has been missing for
        :data:`GAP_WAIT` seconds."""
        ready: list[AuditRecord] = []
        expected = after + 1
        now = time.monotonic()
        for event in events:
            assert event.id is not None
            if event.id != expected and now - self._gaps.setdefault(expected, now) < GAP_WAIT:
                break
            ready.append(event)
            expected = event.id + 1
        self._gaps = {first: seen for first, seen in self._gaps.items() if first >= expected}
        return ready

    def _advance(self) -> None:
        """Move the cursor past the events the collector has received."""
        stats = self.sender.stats()
        done = stats.sent + stats.dropped - self._accounted
        last = None
        while self._handed and (done > 0 or not self._handed[0][1]):
            last, handed = self._handed.popleft()
            if handed:
                done -= 1
                self._accounted += 1
        if last is not None and self.lease.held:
            with self.db.write() as session:
                move_forward_cursor(session, _CURSOR, last)
