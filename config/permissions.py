"""The permissions a role can grant: one for each kind of thing a caller may do."""

from __future__ import annotations

import enum


class Permission(enum.StrEnum):
    """What a route (or DIMSE service) requires of its caller."""

    DICOMWEB_READ = "dicomweb.read"
    """QIDO-RS, WADO-RS, WADO-URI, the viewer's data."""
    DICOMWEB_WRITE = "dicomweb.write"
    """STOW-RS."""
    REPORTS_READ = "reports.read"
    REPORTS_WRITE = "reports.write"
    """Report intake over HTTP."""
    LABELS_READ = "labels.read"
    LABELS_REVIEW = "labels.review"
    COHORTS_READ = "cohorts.read"
    """Cohort definitions and previews."""
    COHORTS_WRITE = "cohorts.write"
    """Define and freeze cohorts."""
    EXPORT = "export"
    """Download exports of frozen cohorts."""
    QUARANTINE = "admin.quarantine"
    REIDENTIFY = "admin.reidentify"
    USERS = "admin.users"
    """Users and API tokens."""
    AUDIT = "admin.audit"
    """Read the audit trail."""
    SETTINGS = "admin.settings"
    SYSTEM = "system.read"
    """Prometheus metrics and the node's state."""


PERMISSIONS = frozenset(p.value for p in Permission)
