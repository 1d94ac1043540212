"""The catalog schema: the DICOM hierarchy plus the change log.

Columns hold what QIDO-RS (PS3.18 Table 6.7.1-1/-2) and C-FIND (PS3.4 C.6) match on or must
return, as decoded text. Dates are normalised to ``YYYYMMDD`` and times to ``HHMMSS[.ffffff]``
so that range matching is a string comparison an index serves; the ``*_ci`` columns hold
case- and accent-folded copies of person names and descriptions so case-insensitive matching
is an index lookup too, and the ``*_fuzzy`` columns the word keys of fuzzy person-name
matching (:mod:`catalog.normalize`; on PostgreSQL trigram indexes serve infix patterns).
The full header of every instance is kept as DICOM JSON (``Instance.metadata_json``).
Studies and series keep their instance counts (updated in SQL by the writer); patient-level
counts are sums over the patient's studies.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)
SHORT = String(64)
LONG = String(1024)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every catalog table."""


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(SHORT, index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(SHORT, default="")
    patient_name: Mapped[str | None] = mapped_column(LONG)
    patient_name_ci: Mapped[str | None] = mapped_column(LONG, index=True)
    patient_name_fuzzy: Mapped[str | None] = mapped_column(LONG)  # catalog.normalize.name_key
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "study"
    __table_args__ = (Index("ix_study_date_time", "study_date", "study_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(SHORT, index=True)
    issuer_of_accession_number: Mapped[str | None] = mapped_column(SHORT)
    study_id: Mapped[str | None] = mapped_column(SHORT)
    study_description: Mapped[str | None] = mapped_column(LONG)
    study_description_ci: Mapped[str | None] = mapped_column(LONG, index=True)
    referring_physician_name: Mapped[str | None] = mapped_column(LONG)
    referring_physician_name_ci: Mapped[str | None] = mapped_column(LONG, index=True)
    referring_physician_name_fuzzy: Mapped[str | None] = mapped_column(LONG)
    patient_age: Mapped[str | None] = mapped_column(String(4))
    patient_size: Mapped[float | None] = mapped_column(Float)
    patient_weight: Mapped[float | None] = mapped_column(Float)
    institution_name: Mapped[str | None] = mapped_column(LONG)
    timezone_offset_from_utc: Mapped[str | None] = mapped_column(String(5))
    modalities_in_study: Mapped[str] = mapped_column(SHORT, default="")
    source: Mapped[str | None] = mapped_column(String(96), index=True)
    """Where its first instance came from: the door, ``door:AE`` when a calling AE title
    sent it (the dashboard's distribution by source, without reading instances)."""
    number_of_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )

    patient: Mapped[Patient] = relationship(back_populates="studies")
    """The patient the study was first stored under (whose attributes a query returns
    unless it matched on another of the study's patients)."""
    series: Mapped[list[Series]] = relationship(back_populates="study")


class StudyPatient(Base):
    """Each patient a study's instances arrived under (the first one included).

    Usually one; real archives have studies whose instances carry two Patient IDs (a
    patient merge, a corrected registration): queries find the study under each.
    """

    __tablename__ = "study_patient"

    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), primary_key=True, index=True)


class StudyProject(Base):
    """Each project a study belongs to (assigned on arrival by ``access.projects`` rules).

    Who may see a study is decided here: a caller scoped to projects finds only studies with
    a row for one of them, through every door.
    """

    __tablename__ = "study_project"

    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), primary_key=True)
    project: Mapped[str] = mapped_column(SHORT, primary_key=True, index=True)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(LONG)
    series_description_ci: Mapped[str | None] = mapped_column(LONG, index=True)
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(SHORT)
    protocol_name: Mapped[str | None] = mapped_column(LONG)
    performed_procedure_step_start_date: Mapped[str | None] = mapped_column(String(8))
    performed_procedure_step_start_time: Mapped[str | None] = mapped_column(String(16))
    manufacturer: Mapped[str | None] = mapped_column(LONG)
    manufacturer_model_name: Mapped[str | None] = mapped_column(LONG)
    station_name: Mapped[str | None] = mapped_column(SHORT)
    institution_name: Mapped[str | None] = mapped_column(LONG)
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    sequence_name: Mapped[str | None] = mapped_column(SHORT)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    content_date: Mapped[str | None] = mapped_column(String(8))
    content_time: Mapped[str | None] = mapped_column(String(16))
    blob_key: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    """sha256 of the stored file (what the integrity check verifies)."""
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    """sha256 of the content (:mod:`ingest.identity`: the DICOM JSON and the binary values),
    whatever file meta and sequence encoding a sender chose: the identity of the content
    when the instance arrives again. Empty for instances stored before it was recorded
    (computed from the blob when needed)."""
    earlier_content_sha256: Mapped[str | None] = mapped_column(Text)
    """The ``content_sha256`` of each version this one replaced, space-separated: content
    seen before is a duplicate, so a re-sent tree never churns versions."""
    size: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, default=1)
    metadata_json: Mapped[str] = mapped_column(Text)
    source_door: Mapped[str] = mapped_column(String(16))
    source_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deid_method: Mapped[str | None] = mapped_column(String(128))
    """Profile version and CID 7050 option codes it was de-identified with (None: as received)."""
    deid_flag: Mapped[str | None] = mapped_column(String(256))
    """Why the instance needs care although stored (e.g. possible burned-in text)."""

    series: Mapped[Series] = relationship(back_populates="instances")


class ChangeType(enum.StrEnum):
    NEW_PATIENT = "new_patient"
    NEW_STUDY = "new_study"
    NEW_SERIES = "new_series"
    NEW_INSTANCE = "new_instance"
    INSTANCE_REPLACED = "instance_replaced"


class Change(Base):
    """The change log (as Orthanc's ``Changes`` table): one row per catalog event, in order."""

    __tablename__ = "change"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    change_type: Mapped[str] = mapped_column(String(32))
    resource_uid: Mapped[str] = mapped_column(UID)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- deid ---


class VaultEntry(Base):
    """Originals behind one pseudonym, encrypted (Fernet) with a key kept outside the catalog.

    ``kind`` is ``patient``, ``study`` or ``series``; ``pseudonym`` is the pseudo Patient ID
    or the replaced Study/Series Instance UID. Nothing in this row is PHI in the clear.
    """

    __tablename__ = "deid_vault"
    __table_args__ = (UniqueConstraint("kind", "pseudonym"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    pseudonym: Mapped[str] = mapped_column(UID)
    patient_pseudonym: Mapped[str] = mapped_column(SHORT, index=True)
    token: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who did what, when, from where, with which outcome: an append-only trail.

    Every door writes here (associations, stores, queries, retrieves, exports, logins,
    re-identification, quarantine review, token and user changes, refused requests). The
    database refuses to change or delete a row (triggers of migration 0011). ``target`` is
    a pseudonym, a stored (de-identified) UID, a cohort, an export run, a token or user name:
    never an original identifier; ``detail`` holds counts and the like as JSON.
    """

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    door: Mapped[str] = mapped_column(String(16), default="node", server_default="node")
    remote: Mapped[str] = mapped_column(String(128), default="", server_default="")
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEventStudy(Base):
    """A study an audit event concerns (its stored, de-identified Study Instance UID)."""

    __tablename__ = "audit_event_study"

    event_id: Mapped[int] = mapped_column(ForeignKey("audit_event.id"), primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, primary_key=True, index=True)


class AuditForwardCursor(Base):
    """How far a forwarder (the syslog sender) has sent the audit trail."""

    __tablename__ = "audit_forward_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)


class QuarantinedInstance(Base):
    """An instance stored de-identified but held back from the index until reviewed.

    It is absent from the patient/study/series/instance tables, so no query of the archive
    (QIDO-RS, C-FIND, exports, statistics) can see it; ``pacsnode deid quarantine release``
    indexes it, ``discard`` removes it.
    """

    __tablename__ = "deid_quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(256))
    deid_method: Mapped[str | None] = mapped_column(String(128))
    blob_key: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    """As :attr:`Instance.content_sha256`."""
    projects: Mapped[str | None] = mapped_column(Text)
    """The projects its study joins once released (JSON: ``[projects, new_study_projects]``
    as :class:`catalog.InstanceRecord` has them)."""
    size: Mapped[int] = mapped_column(BigInteger)
    source_door: Mapped[str] = mapped_column(String(16))
    source_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- labeling ---
# Reports, their links to studies and the labels derived from them (docs/labeling.md).
# Nothing here is in the clear: identifiers are the same keyed-HMAC pseudonyms the images
# carry, dates are shifted by the patient's offset, and report text is de-identified.


class Report(Base):
    """One radiology or pathology report, de-identified before it was stored."""

    __tablename__ = "report"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the pseudonyms, type and de-identified text: the same report sent twice."""
    report_type: Mapped[str] = mapped_column(String(16))  # radiology | pathology
    modality: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(SHORT, index=True)  # pseudonym
    accession_number: Mapped[str | None] = mapped_column(SHORT, index=True)  # pseudonym
    exam_date: Mapped[str | None] = mapped_column(String(8))  # YYYYMMDD, shifted
    findings: Mapped[str] = mapped_column(Text, default="")  # de-identified
    impression: Mapped[str] = mapped_column(Text, default="")  # de-identified
    source_door: Mapped[str] = mapped_column(String(16))  # hl7 | file | rest
    rules_version: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    links: Mapped[list[ReportLink]] = relationship(back_populates="report")
    labels: Mapped[list[ReportLabel]] = relationship(back_populates="report")

    @property
    def text(self) -> str:
        """The de-identified text labels are extracted from (findings, then impression)."""
        return "\n".join(part for part in (self.findings, self.impression) if part)


class ReportLink(Base):
    """A report belongs to a study: how that was decided and how sure it is."""

    __tablename__ = "report_link"
    __table_args__ = (UniqueConstraint("report_pk", "study_pk"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("report.id"), index=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))  # accession | patient_date | pathology_prior
    confidence: Mapped[float] = mapped_column(Float)
    days_apart: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    report: Mapped[Report] = relationship(back_populates="links")


class _ReviewColumns:
    """What a person decided about a label; re-extraction never touches these columns."""

    override_value: Mapped[int | None] = mapped_column(Integer)
    review_status: Mapped[str] = mapped_column(String(16), default="auto")
    """auto | confirmed | overridden"""
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    review_note: Mapped[str | None] = mapped_column(Text)

    @property
    def effective_value(self) -> int:
        """The class in force: a person's decision, else the extracted value."""
        return self.override_value if self.override_value is not None else self.value  # type: ignore[attr-defined]


class ReportLabel(_ReviewColumns, Base):
    """One task's class for one report, with its evidence (span, rule, confidence)."""

    __tablename__ = "report_label"
    __table_args__ = (UniqueConstraint("report_pk", "task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("report.id"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)  # 1 | 0 | 2 | -1, as extracted
    confidence: Mapped[float] = mapped_column(Float)
    rule: Mapped[str] = mapped_column(Text)
    span_text: Mapped[str] = mapped_column(Text, default="")
    span_start: Mapped[int | None] = mapped_column(Integer)
    span_end: Mapped[int | None] = mapped_column(Integer)
    category: Mapped[str | None] = mapped_column(String(16))  # BI-RADS / Lung-RADS / LI-RADS
    size_mm: Mapped[float | None] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(default=False, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    report: Mapped[Report] = relationship(back_populates="labels")


class Label(_ReviewColumns, Base):
    """One task's class for one study: what cohorts and exports use.

    Derived from the labels of the study's linked reports (pathology over radiology by
    default); ``report_pk`` is the report that decided it.
    """

    __tablename__ = "label"
    __table_args__ = (UniqueConstraint("study_pk", "task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    value: Mapped[int] = mapped_column(Integer)  # 1 | 0 | 2 | -1, as derived
    confidence: Mapped[float] = mapped_column(Float)
    report_pk: Mapped[int | None] = mapped_column(ForeignKey("report.id"))
    rule: Mapped[str] = mapped_column(Text)
    span_text: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str | None] = mapped_column(String(16))
    size_mm: Mapped[float | None] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(default=False, index=True)
    review_reason: Mapped[str | None] = mapped_column(String(256))
    rules_version: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- export ---


class Cohort(Base):
    """One version of a saved cohort: a JSON definition; frozen, it pins its members.

    Defining a cohort again under the same name adds a version; a frozen version never
    changes, so exporting it again gives the same data and the same manifest.
    """

    __tablename__ = "cohort"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    definition_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    frozen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    frozen_json: Mapped[str | None] = mapped_column(Text)
    """What the freeze recorded besides the members: label schema, de-identification."""
    projects: Mapped[str | None] = mapped_column(Text)
    """The projects its studies are chosen from, as a sorted JSON list (``None``: every
    project): those its first version's author saw. Only callers who see all of them see
    the cohort."""


class CohortSeries(Base):
    """A series of a frozen cohort, with the attributes and labels it had when frozen."""

    __tablename__ = "cohort_series"
    __table_args__ = (UniqueConstraint("cohort_pk", "series_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_pk: Mapped[int] = mapped_column(ForeignKey("cohort.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"))
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    patient_id: Mapped[str] = mapped_column(SHORT)
    split: Mapped[str] = mapped_column(String(32), default="")
    attributes_json: Mapped[str] = mapped_column(Text)
    """Sex, age, modality, sequence, dates, ... and labels, as the manifest shows them."""


class CohortInstance(Base):
    """An instance of a frozen cohort, pinned by its content hash."""

    __tablename__ = "cohort_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_series_pk: Mapped[int] = mapped_column(ForeignKey("cohort_series.id"), index=True)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instance.id"))
    position: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)


class ExportRun(Base):
    """One export of a frozen cohort (to a folder or as a download), for the record."""

    __tablename__ = "export_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_pk: Mapped[int] = mapped_column(ForeignKey("cohort.id"), index=True)
    format: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(1024))
    actor: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    files: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped_series: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")


# --- qr: Orthanc sync and scheduled jobs ---


class SyncCursor(Base):
    """How far the sync has followed a source's change feed (Orthanc ``/changes``)."""

    __tablename__ = "sync_cursor"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The source's base URL (no credentials)."""
    last_change: Mapped[int] = mapped_column(BigInteger, default=0)
    """Every change up to this sequence number is fully processed."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SyncedStudy(Base):
    """One study fetched from a source: synced when every instance was accepted.

    Only stored (de-identified) identifiers are kept; the source's own study ID is derived
    from the original identifiers and is never written.
    """

    __tablename__ = "sync_study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(255), index=True)
    change_seq: Mapped[int | None] = mapped_column(BigInteger)
    """The StableStudy change that triggered it; empty for a pull by hand."""
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    """The stored (de-identified) Study Instance UID."""
    instances: Mapped[int] = mapped_column(Integer, default=0)
    """Instances accepted (stored or already there)."""
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    """Instances pacsnode refused for good (invalid, refused by de-identification)."""
    status: Mapped[str] = mapped_column(String(16))
    """``synced`` (every instance accepted) or ``incomplete`` (some refused for good)."""
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobRun(Base):
    """One run of a scheduled job; also its lease, so that nodes sharing a catalog never run
    the same scheduled run twice, nor two runs of a job at once."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job_id", "scheduled_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(191), index=True)
    scheduled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    node: Mapped[str] = mapped_column(String(255))
    """Which node ran it (host name and process id)."""
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    """``running``, ``succeeded``, ``failed``, ``interrupted`` or ``abandoned``."""
    summary: Mapped[str] = mapped_column(Text, default="")
    """What the run did or why it failed; never a value from a data set."""


APSCHEDULER_JOBS = Table(
    "apscheduler_jobs",
    Base.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
"""apscheduler's job store (``SQLAlchemyJobStore``), declared here so that migrations create
it and autogenerate leaves it alone; its layout is apscheduler 3's."""


class AccessToken(Base):
    """An API token: only its sha256 is kept (the token itself is shown once, at creation)."""

    __tablename__ = "access_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(SHORT, unique=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    roles: Mapped[str] = mapped_column(Text)  # JSON list
    projects: Mapped[str | None] = mapped_column(Text)  # JSON list; NULL: every project
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(256))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AppUser(Base):
    """A person who logs in with a password (argon2 hash)."""

    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(SHORT, unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    roles: Mapped[str] = mapped_column(Text)  # JSON list
    projects: Mapped[str | None] = mapped_column(Text)  # JSON list; NULL: every project
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LoginSession(Base):
    """A browser's login (the cookie's sha256), as the principal it stands for."""

    __tablename__ = "login_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    principal: Mapped[str] = mapped_column(Text)  # JSON: name, permissions, projects, method
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
