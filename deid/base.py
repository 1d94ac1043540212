"""The interface between ingest and de-identification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset


class DeidRejectedError(Exception):
    """The instance must not be stored (policy or profile failure); the message says why.

    The message is sent to the peer and logged, so it must never contain a value from the
    data set.
    """


@dataclass(frozen=True)
class Deidentified:
    """The data set to store and whether it differs from what was received.

    ``method`` names the profile and options applied (recorded in the catalog), ``flag``
    says why a stored instance needs care (e.g. possible burned-in text), and
    ``quarantine`` asks ingest to store it outside the index until someone reviews it.
    """

    dataset: Dataset
    changed: bool
    method: str | None = None
    flag: str | None = None
    quarantine: bool = False


class Deidentifier(Protocol):
    def deidentify(self, dataset: Dataset) -> Deidentified:
        """De-identify ``dataset`` in memory; raise :class:`DeidRejectedError` to refuse it."""
        ...

    def stored_uid(self, original: str) -> str:
        """The UID an instance received with UID ``original`` is stored under (Storage
        Commitment finds by it what a sender names by the UIDs it sent)."""
        ...


class PassThroughDeidentifier:
    """Stores instances as received: for archives that hold no patient data to protect."""

    def deidentify(self, dataset: Dataset) -> Deidentified:
        return Deidentified(dataset, changed=False)

    def stored_uid(self, original: str) -> str:
        return original.strip("\0 ")
