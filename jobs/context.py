"""What a scheduled job gets from its node, and how it says it could not finish."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from catalog import Database
from config import Settings
from ingest import Ingestor


@dataclass(frozen=True)
class JobContext:
    """The node's parts a job may use. ``stop`` is set when the node shuts down: a job checks
    it between units of work and raises :class:`JobInterruptedError`."""

    settings: Settings
    db: Database
    ingestor: Ingestor
    stop: threading.Event


class JobFailedError(Exception):
    """A run could not finish; the message is recorded as the run's result and logged, so it
    never contains a value from a data set."""


class JobInterruptedError(JobFailedError):
    """The node was asked to stop during the run."""
