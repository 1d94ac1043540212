"""Scheduled jobs (apscheduler inside the node): the Orthanc sync, run once across nodes."""

from jobs.context import JobContext, JobFailedError, JobInterruptedError
from jobs.orthanc_sync import OrthancSync, StudyResult, SyncReport
from jobs.scheduler import JOBS, NodeScheduler, ScheduledJob, scheduled_jobs

__all__ = [
    "JOBS",
    "JobContext",
    "JobFailedError",
    "JobInterruptedError",
    "NodeScheduler",
    "OrthancSync",
    "ScheduledJob",
    "StudyResult",
    "SyncReport",
    "scheduled_jobs",
]
