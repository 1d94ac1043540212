"""An apscheduler executor that runs a job only after claiming its run in the catalog.

apscheduler 3 keeps jobs in a shared job store but does not coordinate the schedulers of
several nodes: each one may fire the same scheduled run. This executor (apscheduler's
documented extension point: ``BaseExecutor._do_submit_job``) claims the run first
(:func:`catalog.jobs.claim_run`), renews the claim's lease while the job works, and records
how the run ended, so that exactly one node runs each scheduled run.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor

from catalog.jobs import RunOutcome, claim_run, finish_run, node_name, renew_lease
from config import Settings
from jobs.context import JobContext, JobFailedError, JobInterruptedError

log = logging.getLogger(__name__)


class LeasedExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs each scheduled run in a worker thread, once across all nodes.

    Parameters
    ----------
    context
        What jobs get: the job function is called as ``func(context=context)``.
    enabled
        Which job ids this node's configuration enables; a run of another job found in the
        shared job store is skipped.
    lease
        A run whose lease is not renewed for this long is taken for dead.
    """

    def __init__(
        self,
        context: JobContext,
        enabled: Callable[[Settings], frozenset[str]],
        lease: timedelta,
        workers: int = 2,
    ) -> None:
        super().__init__()
        self._context = context
        self._enabled = enabled
        self._lease = lease
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._node = node_name()

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="job")

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait)

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        assert self._pool is not None, "executor not started"
        # Jobs are coalesced: one run stands for every run time missed.
        future = self._pool.submit(self._run, job, run_times[-1])
        future.add_done_callback(lambda done: self._finished(job.id, done))

    def _finished(self, job_id: str, done: Future[list[JobExecutionEvent]]) -> None:
        error = done.exception()
        if error is None:
            self._run_job_success(job_id, done.result())
        else:
            self._run_job_error(job_id, error, error.__traceback__)

    def _run(self, job: Any, scheduled: datetime) -> list[JobExecutionEvent]:
        if job.id not in self._enabled(self._context.settings):
            log.warning(
                "job %s is scheduled in the shared catalog but not enabled on this node; "
                "give every node sharing the catalog the same job settings",
                job.id,
            )
            return []
        claim = claim_run(self._context.db, job.id, scheduled, self._node, self._lease)
        if claim.run_id is None:
            if claim.busy_node is not None:
                log.info(
                    "job %s (scheduled %s) skipped: a run is still in progress on %s",
                    job.id,
                    scheduled.isoformat(),
                    claim.busy_node,
                )
            else:
                log.info(
                    "job %s (scheduled %s) runs on another node (%s)",
                    job.id,
                    scheduled.isoformat(),
                    claim.claimed_by,
                )
            return []
        run_id = claim.run_id
        log.info("job %s started (run %d, scheduled %s)", job.id, run_id, scheduled.isoformat())
        alive = threading.Event()
        keeper = threading.Thread(
            target=self._keep_alive, args=(run_id, alive), name=f"lease-{run_id}", daemon=True
        )
        keeper.start()
        try:
            outcome, summary = self._call(job)
        finally:
            alive.set()
            keeper.join()
        finish_run(self._context.db, run_id, outcome, summary)
        if outcome is RunOutcome.SUCCEEDED:
            log.info("job %s succeeded: %s", job.id, summary)
            code = EVENT_JOB_EXECUTED
        else:
            log.error("job %s %s: %s", job.id, outcome.value, summary)
            code = EVENT_JOB_ERROR
        return [JobExecutionEvent(code, job.id, job._jobstore_alias, scheduled, retval=summary)]

    def _call(self, job: Any) -> tuple[RunOutcome, str]:
        try:
            return RunOutcome.SUCCEEDED, str(job.func(**{**job.kwargs, "context": self._context}))
        except JobInterruptedError as exc:
            return RunOutcome.INTERRUPTED, str(exc)
        except JobFailedError as exc:
            return RunOutcome.FAILED, str(exc)
        except Exception as exc:
            # A bug: its message may quote data, so log where it happened, not what it says.
            log.error(
                "job %s: internal error %s\n%s",
                job.id,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            return RunOutcome.FAILED, f"internal error ({type(exc).__name__})"

    def _keep_alive(self, run_id: int, done: threading.Event) -> None:
        while not done.wait(self._lease.total_seconds() / 4):
            try:
                if not renew_lease(self._context.db, run_id):
                    log.error("run %d lost its lease (taken for dead by another node)", run_id)
            except Exception as exc:
                log.warning("run %d: cannot renew its lease (%s)", run_id, type(exc).__name__)
