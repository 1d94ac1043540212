"""Errors of cohorts and exports; each message is meant for the person who asked."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: the message says what is wrong and what to do."""


class CohortNotFoundError(ExportError, LookupError):
    """No cohort (or no such version) of that name or id."""


class InvalidDefinitionError(ExportError, ValueError):
    """The definition names an unknown label task, class or sequence, or is malformed."""


class CohortNameTakenError(ExportError):
    """The name belongs to a cohort over projects the caller does not see."""


class EmptyCohortError(ExportError):
    """The cohort matches no series: there is nothing to freeze or export."""


class NotFrozenError(ExportError):
    """Exports are of frozen cohorts only (so they can be repeated identically)."""


class AlreadyFrozenError(ExportError):
    """A frozen version never changes; define a new version instead."""


class FrozenDataChangedError(ExportError):
    """An instance pinned by the freeze was replaced or removed since."""


class DestinationError(ExportError):
    """The output folder holds another export, or cannot be written."""


class DiskFullError(DestinationError):
    """The destination filled up; the export can be resumed once there is space."""
