"""Runs of scheduled jobs: claimed, kept alive, finished and listed through the catalog.

A run is claimed by inserting its row, in a transaction that first takes a lock per job
(``BEGIN IMMEDIATE`` on SQLite, a transaction-level advisory lock on PostgreSQL), so that
of all the nodes sharing a catalog exactly one runs a given scheduled run, and never while
another run of the same job is alive. A run stays alive as long as its node renews its
lease (the ``heartbeat_at`` column); a node that dies leaves a run that the next claim
marks ``abandoned``.

A :class:`Lease` uses the same rows for work that must run on one node at a time without a
schedule (the audit forwarder): one long run, held while its node renews it.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.db import Database
from catalog.models import JobRun, utcnow

log = logging.getLogger(__name__)

_LOCK_NAMESPACE = 0x7061_6373 & 0x7FFF_FFFF  # "pacs"; the other key is the job's CRC-32


class RunOutcome(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the node was asked to stop
    ABANDONED = "abandoned"  # its node stopped renewing the lease (died)


def node_name() -> str:
    """How this process is named in run records: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobRunRecord:
    id: int
    job_id: str
    scheduled_at: datetime
    node: str
    started_at: datetime
    finished_at: datetime | None
    outcome: RunOutcome
    summary: str


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: the run's id when this node may run it, otherwise why not."""

    run_id: int | None
    busy_node: str | None = None
    """The node running another run of the job (which is still alive)."""
    claimed_by: str | None = None
    """The node that already claimed this scheduled run."""


def claim_run(
    db: Database, job_id: str, scheduled_at: datetime, node: str, lease: timedelta
) -> Claim:
    """Start the run of ``job_id`` scheduled at ``scheduled_at`` on ``node``, unless another
    node already claimed this scheduled run or another run of the job is still alive."""
    now = utcnow()
    try:
        with db.write() as session:
            _lock_job(session, job_id)
            alive = session.scalars(
                select(JobRun).where(JobRun.job_id == job_id, JobRun.outcome == RunOutcome.RUNNING)
            ).all()
            for run in alive:
                if _aware(run.heartbeat_at) >= now - lease:
                    return Claim(None, busy_node=run.node)
                run.outcome = RunOutcome.ABANDONED
                run.finished_at = now
                run.summary = f"node {run.node} stopped renewing its lease"
            claimed_by = session.scalar(
                select(JobRun.node).where(
                    JobRun.job_id == job_id, JobRun.scheduled_at == _utc(scheduled_at)
                )
            )
            if claimed_by is not None:
                return Claim(None, claimed_by=claimed_by)
            run = JobRun(
                job_id=job_id,
                scheduled_at=_utc(scheduled_at),
                node=node,
                started_at=now,
                heartbeat_at=now,
                outcome=RunOutcome.RUNNING,
                summary="",
            )
            session.add(run)
            session.flush()
            return Claim(run.id)
    except IntegrityError:
        # The same scheduled run, claimed by another node between our checks.
        return Claim(None, claimed_by="another node")


def renew_lease(db: Database, run_id: int) -> bool:
    """Keep a run alive; ``False`` if it is no longer running (another node took it over)."""
    with db.write() as session:
        renewed = session.execute(
            update(JobRun)
            .where(JobRun.id == run_id, JobRun.outcome == RunOutcome.RUNNING)
            .values(heartbeat_at=utcnow())
        )
        return bool(renewed.rowcount)  # type: ignore[attr-defined]


def finish_run(db: Database, run_id: int, outcome: RunOutcome, summary: str) -> None:
    """Record how a run ended."""
    now = utcnow()
    with db.write() as session:
        session.execute(
            update(JobRun)
            .where(JobRun.id == run_id)
            .values(outcome=outcome, summary=summary, finished_at=now, heartbeat_at=now)
        )


def last_runs(db: Database) -> dict[str, JobRunRecord]:
    """The latest run of every job that ever ran."""
    latest = (
        select(JobRun.job_id, func.max(JobRun.id).label("id")).group_by(JobRun.job_id).subquery()
    )
    with db.read() as session:
        runs = session.scalars(select(JobRun).join(latest, JobRun.id == latest.c.id)).all()
        return {run.job_id: _record(run) for run in runs}


def job_runs(db: Database, job_id: str, limit: int = 20) -> list[JobRunRecord]:
    """The latest ``limit`` runs of ``job_id``, newest first."""
    with db.read() as session:
        runs = session.scalars(
            select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id.desc()).limit(limit)
        ).all()
        return [_record(run) for run in runs]


class Lease:
    """Work named ``job_id`` that one node at a time does, for as long as it holds the lease.

    The lease is a run of ``job_id`` that its holder renews; another node takes it over when
    the holder stops (:meth:`release`) or stops renewing it for ``lease`` (it died). Catalog
    round trips are spaced ``lease / 4`` apart, whoever asks how often.
    """

    def __init__(self, db: Database, job_id: str, lease: timedelta, node: str = "") -> None:
        self.db = db
        self.job_id = job_id
        self.node = node or node_name()
        self._lease = lease
        self._run_id: int | None = None
        self._next_check = 0.0

    def hold(self) -> bool:
        """Keep or take the lease; whether this node holds it now."""
        now = time.monotonic()
        if now < self._next_check:
            return self._run_id is not None
        self._next_check = now + self._lease.total_seconds() / 4
        if self._run_id is not None:
            if renew_lease(self.db, self._run_id):
                return True
            log.error("%s: lease lost (taken for dead by another node)", self.job_id)
            self._run_id = None
        claim = claim_run(self.db, self.job_id, utcnow(), self.node, self._lease)
        self._run_id = claim.run_id
        if claim.run_id is not None:
            log.info("%s: lease taken (run %d)", self.job_id, claim.run_id)
        return claim.run_id is not None

    @property
    def held(self) -> bool:
        """Whether the last :meth:`hold` found this node holding the lease."""
        return self._run_id is not None

    def release(self, summary: str) -> None:
        """Give the lease up (the node stops): another node may take it at once. The run
        ends ``succeeded``, so that a node's alerts count only leases whose node died."""
        if self._run_id is not None:
            finish_run(self.db, self._run_id, RunOutcome.SUCCEEDED, summary)
            self._run_id = None


def _lock_job(session: Session, job_id: str) -> None:
    """Serialise claims of one job (SQLite's write transactions are serial already)."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(job_id.encode()) - 2**31  # into int4's range
        session.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
            {"namespace": _LOCK_NAMESPACE, "key": key},
        )


def _record(run: JobRun) -> JobRunRecord:
    return JobRunRecord(
        id=run.id,
        job_id=run.job_id,
        scheduled_at=_aware(run.scheduled_at),
        node=run.node,
        started_at=_aware(run.started_at),
        finished_at=_aware(run.finished_at) if run.finished_at else None,
        outcome=RunOutcome(run.outcome),
        summary=run.summary,
    )


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC, so that two nodes write the same scheduled run identically."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back; the catalog writes UTC only."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
