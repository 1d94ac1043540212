"""The node's scheduler: apscheduler 3 with its job store in the catalog database.

Jobs survive restarts (their next run time is in the catalog) and, through
:class:`jobs.executor.LeasedExecutor`, each scheduled run runs on one node only, however many
nodes share the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from catalog import Database
from catalog.jobs import JobRunRecord, last_runs
from catalog.models import APSCHEDULER_JOBS
from config import Settings
from jobs.context import JobContext
from jobs.executor import LeasedExecutor
from jobs.orthanc_sync import run_sync_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobDefinition:
    """A job the node knows: its function (stored in the job store by reference, so a
    module-level function) and, from the settings, whether and how often it runs."""

    id: str
    name: str
    func: Callable[[JobContext], str]
    enabled: Callable[[Settings], bool]
    interval: Callable[[Settings], float]


JOBS: tuple[JobDefinition, ...] = (
    JobDefinition(
        id="orthanc_sync",
        name="Orthanc sync",
        func=run_sync_job,
        enabled=lambda settings: settings.orthanc_sync.enabled,
        interval=lambda settings: settings.orthanc_sync.interval,
    ),
)


def enabled_jobs(settings: Settings, definitions: Sequence[JobDefinition] = JOBS) -> frozenset[str]:
    return frozenset(d.id for d in definitions if d.enabled(settings))


class NodeScheduler:
    """Runs the enabled jobs of :data:`JOBS` in a node, between :meth:`start` and :meth:`stop`."""

    def __init__(self, context: JobContext, definitions: Sequence[JobDefinition] = JOBS) -> None:
        self._context = context
        self._definitions = tuple(definitions)
        settings = context.settings
        executor = LeasedExecutor(
            context,
            lambda current: enabled_jobs(current, self._definitions),
            lease=timedelta(seconds=settings.scheduler.lease_seconds),
        )
        self._scheduler = BackgroundScheduler(
            jobstores={"default": _job_store(context.db.write_engine)},
            executors={"default": executor},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    def start(self) -> None:
        """Bring the job store in line with this node's settings, then start running jobs."""
        self._scheduler.start(paused=True)
        for definition in self._definitions:
            self._register(definition)
        self._scheduler.resume()
        log.info("scheduler started (%s)", ", ".join(sorted(self.enabled())) or "no jobs enabled")

    def enabled(self) -> frozenset[str]:
        return enabled_jobs(self._context.settings, self._definitions)

    def stop(self) -> None:
        """Ask running jobs to stop between units of work and wait for them."""
        self._context.stop.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        log.info("scheduler stopped")

    def _register(self, definition: JobDefinition) -> None:
        existing = self._scheduler.get_job(definition.id)
        if not definition.enabled(self._context.settings):
            if existing is not None:
                self._scheduler.remove_job(definition.id)
                log.info("job %s removed from the schedule: disabled here", definition.id)
            return
        interval = timedelta(seconds=definition.interval(self._context.settings))
        if (
            existing is not None
            and isinstance(existing.trigger, IntervalTrigger)
            and existing.trigger.interval == interval
        ):
            return  # keep its next run time: the schedule survives restarts
        self._scheduler.add_job(
            definition.func,
            IntervalTrigger(seconds=interval.total_seconds(), timezone=UTC),
            # The job store keeps picklable arguments only: the executor passes the node's
            # context in place of this placeholder.
            kwargs={"context": None},
            id=definition.id,
            name=definition.name,
            replace_existing=True,
            next_run_time=datetime.now(UTC),
        )
        log.info("job %s scheduled every %s", definition.id, interval)


@dataclass(frozen=True)
class ScheduledJob:
    """A job as ``pacsnode jobs list`` shows it."""

    id: str
    name: str
    every: timedelta | None
    next_run: datetime | None
    last_run: JobRunRecord | None


def scheduled_jobs(db: Database) -> list[ScheduledJob]:
    """Every job in the catalog's job store with its next and last run (read-only: it works
    while the node runs, and without a scheduler)."""
    store = _job_store(db.read_engine)
    runs = last_runs(db)
    listed = []
    for job in store.get_all_jobs():
        every = job.trigger.interval if isinstance(job.trigger, IntervalTrigger) else None
        listed.append(ScheduledJob(job.id, job.name, every, job.next_run_time, runs.get(job.id)))
    known = {job.id for job in listed}
    for job_id, run in sorted(runs.items()):
        if job_id not in known:  # ran once, since removed from the schedule
            listed.append(ScheduledJob(job_id, job_id, None, None, run))
    return listed


def _job_store(engine: Engine) -> SQLAlchemyJobStore:
    return SQLAlchemyJobStore(engine=engine, tablename=APSCHEDULER_JOBS.name)
