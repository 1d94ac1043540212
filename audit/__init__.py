"""The audit trail: who did what, when, from where, to which studies.

Events are appended to the catalog (:mod:`catalog.audit`), by :class:`AuditTrail` without
making a door wait, and sent on as DICOM audit messages (PS3.15 A.5) to a syslog collector.
"""

from audit.events import Action, AuditNote, AuditRecord, Door, Outcome
from audit.trail import AuditTrail

__all__ = ["Action", "AuditNote", "AuditRecord", "AuditTrail", "Door", "Outcome"]
