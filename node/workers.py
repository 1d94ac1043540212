"""DICOM worker processes (``workers`` > 1): N acceptors on the DICOM ports, so ingest runs on
every core instead of one (the GIL holds one process's pipeline to one core).

Each worker is a spawned process with its own core (catalog engine, blob store, ingest
pipeline, audit writer) and a :class:`~scp.ae.DicomServer` bound with ``SO_REUSEPORT``; the
kernel spreads new connections over the workers. The main process keeps the HTTP server, MLLP,
the scheduler and the monitor. It binds each DICOM port first (``SO_REUSEPORT``, never
listening): that says early when the address is taken, gives port 0 its number, and keeps the
port the node's while a worker is restarted.

A worker reports to the main process over a pipe of its own (no lock shared between processes
that a killed worker could leave held): ``ready`` once it listens, one ``result`` per ingested
instance (door, outcome, seconds, bytes: the main process's ``/metrics`` counts them), and its
number of associations when it changes. A worker that dies while the node runs is logged and
started again; SIGTERM stops a worker gracefully, and a worker whose main process is gone
stops by itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from config import Settings
from ingest import IngestResult, Outcome
from node.listeners import bind_tcp
from scp.slots import SharedSlots

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0
"""Seconds a worker may take to import, open its core and listen."""
RESTART_DELAY = 1.0
"""Seconds before restarting a worker that died within :data:`STABLE_AFTER` of its start,
doubled for each such death in a row (up to :data:`MAX_RESTART_DELAY`): a worker that cannot
run (its catalog is gone) is not restarted in a tight loop."""
MAX_RESTART_DELAY = 60.0
STABLE_AFTER = 10.0
STOP_MARGIN = 10.0
"""Seconds beyond ``shutdown_grace`` a worker may take to close its core before SIGKILL."""
COUNT_INTERVAL = 0.2
"""Seconds between two looks at a worker's association count."""

ResultSink = Callable[[str, Outcome, float, int], None]
"""Takes (door, outcome, seconds, bytes) of one ingested instance."""


class WorkerStartError(RuntimeError):
    """A DICOM worker could not start (the message says why)."""


@dataclass
class _Worker:
    slot: int
    process: BaseProcess
    messages: Connection
    started: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    associations: int = 0


class WorkerPool:
    """The main process's side: reserve the DICOM ports, run ``count`` workers, restart one
    that dies, stop them all. It answers as :class:`~scp.ae.DicomServer` does (``port``,
    ``tls_port``, ``active_associations``, ``start``, ``start_tls``, ``stop``)."""

    def __init__(self, settings: Settings, count: int, on_result: ResultSink) -> None:
        self.settings = settings
        self.count = count
        self._on_result = on_result
        self._context = multiprocessing.get_context("spawn")
        limited = [e.ae_title for e in settings.allowed_calling_aets if e.max_associations]
        self._slots = SharedSlots(self._context, count, limited)
        self._reserved: dict[str, socket.socket] = {}
        self._workers: dict[int, _Worker] = {}
        self._restart_at: dict[int, float] = {}
        self._young_deaths: dict[int, int] = {}
        self._lock = threading.RLock()  # also held while a worker is restarted (spawned)
        self._stopping = threading.Event()
        self._running = False
        self._supervisor: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._reserved["dicom"].getsockname()[1])

    @property
    def tls_port(self) -> int:
        if "tls" not in self._reserved:
            raise RuntimeError("DICOM TLS server not started")
        return int(self._reserved["tls"].getsockname()[1])

    def pids(self) -> list[int]:
        """The workers' process ids (for tests and the benchmark)."""
        with self._lock:
            return [w.process.pid for w in self._workers.values() if w.process.pid is not None]

    def active_associations(self) -> int:
        with self._lock:
            return sum(w.associations for w in self._workers.values())

    def start(self) -> None:
        """Reserve the DICOM port (``OSError`` when its address cannot be had)."""
        self._reserved["dicom"] = bind_tcp(
            self.settings.dicom_host, self.settings.dicom_port, reuse_port=True
        )

    def start_tls(self, timeout: float = START_TIMEOUT) -> None:
        """Reserve the DICOM TLS port, when configured (``OSError``), then start the workers
        and return once each listens (:class:`WorkerStartError` when one cannot)."""
        config = self.settings.dicom_tls
        if config.enabled:
            self._reserved["tls"] = bind_tcp(config.host, config.port, reuse_port=True)
        for slot in range(self.count):
            self._spawn(slot)
        self._supervisor = threading.Thread(
            target=self._supervise, name="dicom-workers", daemon=True
        )
        self._supervisor.start()
        deadline = time.monotonic() + timeout
        for slot in range(self.count):
            worker = self._workers[slot]
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                self.stop(grace=0)
                raise WorkerStartError(f"DICOM worker {slot} did not start in {timeout:g} s")
            if worker.failure is not None:
                self.stop(grace=0)
                raise WorkerStartError(f"DICOM worker {slot} did not start: {worker.failure}")
        log.info(
            "DICOM AE %s listening on %s:%s in %d worker processes (pids %s)",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.port,
            self.count,
            ", ".join(map(str, self.pids())),
        )
        self._running = True

    def stop(self, grace: float) -> None:
        """SIGTERM every worker (each stops listening, lets its associations finish for
        ``grace`` s, aborts the rest and closes its core), wait, SIGKILL a late one."""
        with self._lock:  # no restart after this: every worker gets the SIGTERM
            self._stopping.set()
            workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + STOP_MARGIN
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("DICOM worker %d did not stop in time: killed", worker.slot)
                worker.process.kill()
                worker.process.join()
        if self._supervisor is not None:
            self._supervisor.join()
        for worker in workers:
            worker.messages.close()
        for sock in self._reserved.values():
            sock.close()
        self._reserved.clear()
        if workers:
            log.info("DICOM workers stopped")

    def _spawn(self, slot: int) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        settings = self.settings.model_copy(
            update={
                "dicom_port": self.port,
                "dicom_tls": self.settings.dicom_tls.model_copy(
                    update={"port": self.tls_port} if "tls" in self._reserved else {}
                ),
            }
        )
        process = self._context.Process(
            target=run_worker,
            args=(settings.model_dump(), slot, sender, sys.getswitchinterval(), self._slots),
            name=f"pacsnode-dicom-{slot}",
        )
        process.start()
        sender.close()  # the worker holds the only writer: its exit is this reader's EOF
        with self._lock:
            self._workers[slot] = _Worker(slot, process, receiver)

    def _supervise(self) -> None:
        """Read the workers' messages until each pipe's end (its worker exited); restart a
        worker that died while the node runs."""
        while True:
            with self._lock:
                by_connection = {
                    w.messages: w for w in self._workers.values() if not w.messages.closed
                }
            if self._stopping.is_set() and not by_connection:
                return
            for connection in wait(list(by_connection), timeout=0.5):
                assert isinstance(connection, Connection)
                self._receive(by_connection[connection])
            self._restart_due()

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.messages.recv()
        except (EOFError, OSError):
            self._exited(worker)
            return
        kind = message[0]
        if kind == "result":
            _, door, outcome, seconds, size = message
            self._on_result(door, Outcome(outcome), seconds, size)
        elif kind == "associations":
            worker.associations = message[1]
        elif kind == "ready":
            worker.ready.set()
            if self._running:
                log.info("DICOM worker %d restarted (pid %s)", worker.slot, worker.process.pid)
        elif kind == "failed":
            worker.failure = message[1]
            worker.ready.set()

    def _exited(self, worker: _Worker) -> None:
        """A worker's pipe ended. A worker stopped by a signal (the node's stop, or SIGTERM
        sent to the whole process group by systemd or a terminal) exits with status 0 and
        stays stopped; any other end is a crash, and the worker is started again."""
        worker.process.join(5)
        worker.messages.close()
        worker.associations = 0
        self._slots.clear(worker.slot)
        code = worker.process.exitcode
        if not self._running:  # still starting: start_tls() reports it
            worker.failure = worker.failure or f"exited with status {code}"
            worker.ready.set()
            return
        if self._stopping.is_set():
            return
        if code == 0:
            log.warning("DICOM worker %d stopped on a signal; not restarted", worker.slot)
            return
        lived = time.monotonic() - worker.started
        young = self._young_deaths.get(worker.slot, 0) + 1 if lived < STABLE_AFTER else 0
        self._young_deaths[worker.slot] = young
        delay = min(RESTART_DELAY * 2 ** (young - 1), MAX_RESTART_DELAY) if young else 0.0
        log.error(
            "DICOM worker %d (pid %s) exited with status %s after %.0f s; restarting it in %g s",
            worker.slot,
            worker.process.pid,
            code,
            lived,
            delay,
        )
        self._restart_at[worker.slot] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            for slot, when in list(self._restart_at.items()):
                if when <= now and not self._stopping.is_set():
                    del self._restart_at[slot]
                    self._spawn(slot)


# ------------------------------------------------------------------------- the worker itself


class _Reporter:
    """The worker's end of its pipe; several threads send on it."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        # OSError: the main process is gone, and the worker is stopping anyway
        with self._lock, contextlib.suppress(OSError):
            self._connection.send(message)

    def result(self, result: IngestResult) -> None:
        self.send("result", result.source.door, result.outcome.value, result.seconds, result.size)


def run_worker(
    values: dict[str, Any], slot: int, connection: Connection, switch: float, slots: SharedSlots
) -> None:
    """A worker's main: build a core, listen on the DICOM ports, serve until SIGTERM/SIGINT
    or until the main process is gone, then stop gracefully."""
    from node.app import build_core
    from node.cli_common import configure_logging
    from scp.ae import DicomServer

    settings = Settings.model_validate(values)
    configure_logging(settings.log_level, process=f"dicom worker {slot}")
    sys.setswitchinterval(switch)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the main process reloads HTTPS
    parent = multiprocessing.parent_process()
    if parent is not None:
        sentinel = parent.sentinel

        def watch_parent() -> None:
            wait([sentinel])
            stop.set()

        threading.Thread(target=watch_parent, name="parent", daemon=True).start()
    reporter = _Reporter(connection)
    core = build_core(settings, listeners=(reporter.result,), migrate=False)
    dicom = DicomServer(
        settings, core.ingestor, core.audit, reuse_port=True, shared=slots.for_worker(slot)
    )
    try:
        try:
            dicom.start()
            dicom.start_tls()
        except OSError as exc:
            reporter.send("failed", f"cannot listen: {exc}")
            sys.exit(3)
        reporter.send("ready")
        reported = 0
        while not stop.wait(COUNT_INTERVAL):
            dicom.peers.refresh()
            count = dicom.active_associations()
            if count != reported:
                reporter.send("associations", count)
                reported = count
        dicom.stop(grace=settings.shutdown_grace)
        reporter.send("associations", 0)
        core.audit.flush()
    finally:
        core.close()
        connection.close()
