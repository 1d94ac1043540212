"""The node watching itself: a thread that every ``alerts.interval`` seconds keeps a sample
(CPU, memory, ingest counters) and evaluates the alert rules, and the System page's view of
the node (:meth:`SystemMonitor.snapshot`, behind ``GET /api/system``).

Ingest rates come from the node's own counters (``pacsnode_instances``), so they count what
this process received; the samples cover the last 30 minutes, in memory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil
from sqlalchemy.exc import SQLAlchemyError

from catalog import CatalogUnavailableError, Database
from catalog.jobs import RunOutcome, job_runs, last_runs
from config import Settings
from jobs import scheduled_jobs
from node.alerts import AlertKind, Alerts, Finding
from node.metrics import IngestCounts, NodeMetrics

log = logging.getLogger(__name__)

HISTORY_SECONDS = 1800.0
"""How far back the samples of the ingest chart go."""


@dataclass(frozen=True)
class Sample:
    at: float
    """``time.time()`` when taken."""
    counts: IngestCounts
    cpu_percent: float
    memory_percent: float


class SystemMonitor:
    """Samples the node and evaluates the alert rules, between :meth:`start` and :meth:`stop`.

    Parameters
    ----------
    associations
        How many DIMSE associations are in progress.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        metrics: NodeMetrics,
        alerts: Alerts,
        associations: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.alerts = alerts
        self._db = db
        self._metrics = metrics
        self._associations = associations
        interval = settings.alerts.interval
        self._samples: deque[Sample] = deque(maxlen=math.ceil(HISTORY_SECONDS / interval) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        psutil.cpu_percent()  # the first call only starts the measurement
        self._sample()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.alerts.interval):
            self.check()

    def check(self) -> None:
        """Take a sample and evaluate the rules now (the thread does, every interval)."""
        try:
            self._sample()
            self.alerts.update(self.findings())
        except Exception as exc:  # a bug must not end the watching
            log.exception("monitor: %s", type(exc).__name__)

    def _sample(self) -> None:
        sample = Sample(
            time.time(),
            self._metrics.ingest_counts(),
            psutil.cpu_percent(),
            psutil.virtual_memory().percent,
        )
        with self._lock:
            self._samples.append(sample)

    def findings(self) -> list[Finding]:
        """What the alert rules find now."""
        rules = self.settings.alerts
        found = []
        disk = psutil.disk_usage(str(self.settings.data_dir))
        if disk.percent > rules.disk_percent:
            found.append(
                Finding(
                    AlertKind.DISK,
                    f"the data folder's disk is {disk.percent:.1f}% used "
                    f"(alerts.disk_percent: {rules.disk_percent:g})",
                    values={"percent": disk.percent, "threshold": rules.disk_percent},
                )
            )
        window = self.ingest_window()
        errors = window.rejected + window.failed
        limit = rules.ingest_errors_per_minute * rules.ingest_window / 60
        if errors > limit:
            found.append(
                Finding(
                    AlertKind.INGEST_ERRORS,
                    f"{errors:g} instances refused or failed in {rules.ingest_window:g} s "
                    f"(alerts.ingest_errors_per_minute: {rules.ingest_errors_per_minute:g})",
                    values={
                        "count": errors,
                        "seconds": rules.ingest_window,
                        "threshold": rules.ingest_errors_per_minute,
                    },
                )
            )
        try:
            self._db.check()
            failing = {job: n for job, n in self.failing_jobs().items() if n >= rules.job_failures}
        except CatalogUnavailableError as exc:
            return [*found, Finding(AlertKind.CATALOG, str(exc))]
        for job, count in sorted(failing.items()):
            found.append(
                Finding(
                    AlertKind.JOB_FAILING,
                    f"job {job} failed {count} times in a row",
                    subject=job,
                    values={"job": job, "count": count},
                )
            )
        return found

    def failing_jobs(self) -> dict[str, int]:
        """Failed (or abandoned) runs since the last success, by job, counted up to
        ``alerts.job_failures``; interrupted runs (the node was stopped) do not count."""
        limit = self.settings.alerts.job_failures
        streaks = {}
        for job in last_runs(self._db):
            count = 0
            for run in job_runs(self._db, job, limit=2 * limit + 2):
                if run.outcome is RunOutcome.SUCCEEDED or count == limit:
                    break
                count += run.outcome in (RunOutcome.FAILED, RunOutcome.ABANDONED)
            streaks[job] = count
        return streaks

    def ingest_window(self, counts: IngestCounts | None = None) -> IngestCounts:
        """Instances received in the last ``alerts.ingest_window`` seconds (since the
        node started, when it started later), up to ``counts`` (now)."""
        now = time.time()
        since = now - self.settings.alerts.ingest_window
        with self._lock:
            baseline = next(
                (s for s in reversed(self._samples) if s.at <= since),
                self._samples[0] if self._samples else Sample(now, IngestCounts(), 0.0, 0.0),
            )
        return (counts or self._metrics.ingest_counts()) - baseline.counts

    def history(self) -> list[dict[str, Any]]:
        """Instances per minute between consecutive samples, CPU and memory at each."""
        with self._lock:
            samples = list(self._samples)
        points = []
        for before, after in itertools.pairwise(samples):
            delta = after.counts - before.counts
            per_minute = 60 / max(after.at - before.at, 1e-3)
            points.append(
                {
                    "at": _iso(after.at),
                    "accepted": round(delta.accepted * per_minute, 2),
                    "rejected": round(delta.rejected * per_minute, 2),
                    "failed": round(delta.failed * per_minute, 2),
                    "cpu_percent": after.cpu_percent,
                    "memory_percent": after.memory_percent,
                }
            )
        return points

    def snapshot(self) -> dict[str, Any]:
        """The node as the System page shows it (no data of the archive: node-wide)."""
        rules = self.settings.alerts
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self.settings.data_dir))
        with self._lock:
            cpu = self._samples[-1].cpu_percent if self._samples else 0.0
        counts = self._metrics.ingest_counts()
        window = self.ingest_window(counts)
        minutes = rules.ingest_window / 60
        return {
            "at": datetime.now(UTC).isoformat(),
            "cpu": {"percent": cpu, "cores": psutil.cpu_count() or 1},
            "memory": {
                "percent": memory.percent,
                "used": memory.total - memory.available,
                "total": memory.total,
                "process": _resident_bytes(),
            },
            "disk": {
                "percent": disk.percent,
                "used": disk.used,
                "free": disk.free,
                "total": disk.total,
                "threshold": rules.disk_percent,
            },
            "associations": {
                "active": self._associations(),
                "max": self.settings.max_associations,
            },
            "ingest": {
                "since_start": _counts_json(counts),
                "window_seconds": rules.ingest_window,
                "window": _counts_json(window),
                "per_minute": {k: round(v / minutes, 2) for k, v in _counts_json(window).items()},
                "history": self.history(),
            },
            "jobs": self._jobs(),
            "alerts": [alert.to_json() for alert in self.alerts.active()],
        }

    def _jobs(self) -> list[dict[str, Any]] | None:
        """The scheduled jobs with their last runs (``None``: the catalog does not answer,
        which the alerts say)."""
        try:
            failing = self.failing_jobs()
            listed = scheduled_jobs(self._db)
        except SQLAlchemyError:
            return None
        return [
            {
                "id": job.id,
                "name": job.name,
                "every_seconds": job.every.total_seconds() if job.every else None,
                "next_run": job.next_run.isoformat() if job.next_run else None,
                "failures_in_a_row": failing.get(job.id, 0),
                "last_run": None
                if job.last_run is None
                else {
                    "outcome": job.last_run.outcome.value,
                    "started_at": job.last_run.started_at.isoformat(),
                    "finished_at": job.last_run.finished_at.isoformat()
                    if job.last_run.finished_at
                    else None,
                    "node": job.last_run.node,
                    "summary": job.last_run.summary,
                },
            }
            for job in listed
        ]


def _counts_json(counts: IngestCounts) -> dict[str, float]:
    return {"accepted": counts.accepted, "rejected": counts.rejected, "failed": counts.failed}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _resident_bytes() -> int:
    """Resident memory of the node: this process and its children (the DICOM workers)."""
    node = psutil.Process()
    total = 0
    for process in [node, *node.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that just ended
            total += process.memory_info().rss
    return total
