"""Index one stored instance in a single transaction (the ``index`` stage of ingest).

This is the hot path of every door, so it speaks SQLAlchemy Core on the session's connection
with statements built once: an instance of a known series costs six short statements.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from catalog.attributes import InstanceRecord
from catalog.db import Database
from catalog.models import (
    Change,
    ChangeType,
    Instance,
    Patient,
    Series,
    Study,
    StudyPatient,
    StudyProject,
    utcnow,
)
from catalog.normalize import fold, name_key
from catalog.quarantine import QuarantineResult, hold, released


class IndexOutcome(enum.Enum):
    NEW = "new"
    REPLACED = "replaced"
    SAME = "same"  # another writer indexed identical bytes first


class StoredBlob(Protocol):
    """The blob an instance row points to (``storage.BlobRef`` is one)."""

    @property
    def key(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class IndexResult:
    outcome: IndexOutcome
    version: int
    obsolete_blob_key: str | None = None
    """The blob no longer referenced (the replaced version, or ours when SAME)."""


@dataclass(frozen=True)
class Existing:
    blob_key: str
    sha256: str
    version: int
    content_sha256: str | None
    """Empty for instances indexed before it was recorded."""
    earlier_content_sha256: str | None
    study_pk: int

    def has_content(self, content_sha256: str) -> bool:
        """Whether this version, or one it replaced, holds that content."""
        return content_sha256 in _contents(self.content_sha256, self.earlier_content_sha256)


def _contents(current: str | None, earlier: str | None) -> list[str]:
    return [*(earlier or "").split(), *([current] if current else [])]


_FIND = (
    select(
        Instance.blob_key,
        Instance.sha256,
        Instance.version,
        Instance.content_sha256,
        Instance.earlier_content_sha256,
        Series.study_pk,
    )
    .join(Series, Series.id == Instance.series_pk)
    .where(Instance.sop_instance_uid == bindparam("uid"))
)
_LOCK_INSTANCE = (
    select(
        Instance.id,
        Instance.series_pk,
        Instance.blob_key,
        Instance.sha256,
        Instance.content_sha256,
        Instance.earlier_content_sha256,
        Instance.size,
        Instance.version,
    )
    .where(Instance.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_SERIES = (
    select(Series.id, Series.study_pk, Patient.patient_id, Patient.issuer_of_patient_id)
    .join(Study, Series.study_pk == Study.id)
    .join(Patient, Study.patient_pk == Patient.id)
    .where(Series.series_instance_uid == bindparam("uid"))
)
_INSERT_INSTANCE = insert(Instance)
_COUNT_SERIES = (
    update(Series)
    .where(Series.id == bindparam("pk"))
    .values(number_of_instances=Series.number_of_instances + 1)
)
_COUNT_STUDY = (
    update(Study)
    .where(Study.id == bindparam("pk"))
    .values(
        number_of_instances=Study.number_of_instances + bindparam("instances"),
        number_of_series=Study.number_of_series + bindparam("series"),
        total_bytes=Study.total_bytes + bindparam("bytes"),
        updated_at=bindparam("now"),
    )
)
_INSERT_CHANGE = insert(Change)
_JOIN_PROJECT = {  # built once (by "is SQLite"): a statement built per call is compiled again
    sqlite: dialect_insert(StudyProject).on_conflict_do_nothing()
    for sqlite, dialect_insert in ((True, sqlite_insert), (False, pg_insert))
}


class CatalogWriter:
    """Writes instances into the catalog; safe under concurrent writers (threads, processes)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, sop_instance_uid: str) -> Existing | None:
        """The stored version of an instance, if any (the ``dedupe`` stage asks this)."""
        with self.db.read_engine.connect() as connection:  # no ORM session: the hot path
            row = connection.execute(_FIND, {"uid": sop_instance_uid}).one_or_none()
        return Existing(*row) if row else None

    def join_projects(self, study_pk: int, projects: tuple[str, ...]) -> None:
        """Make a stored study a member of ``projects`` too (a duplicate that arrived for
        another project); a write only when it is not one already."""
        if not projects:
            return
        with self.db.read() as session:
            known = set(
                session.scalars(
                    select(StudyProject.project).where(StudyProject.study_pk == study_pk)
                )
            )
        if not set(projects) <= known:
            with self.db.write() as session:
                join_projects(session.connection(), study_pk, projects)

    def quarantine(
        self,
        record: InstanceRecord,
        blob: StoredBlob,
        *,
        reason: str,
        door: str,
        aet: str | None,
        content_sha256: str | None = None,
    ) -> QuarantineResult:
        """Hold ``record`` outside the index until reviewed (see :mod:`catalog.quarantine`)."""
        return hold(
            self.db,
            record,
            blob,
            reason=reason,
            door=door,
            aet=aet,
            content_sha256=content_sha256,
        )

    def index(
        self,
        record: InstanceRecord,
        blob: StoredBlob,
        *,
        door: str,
        aet: str | None,
        content_sha256: str | None = None,
        released_by: str | None = None,
    ) -> IndexResult:
        """Record ``record`` stored as ``blob``; one transaction, retried on a race.

        ``content_sha256`` identifies the data set (:attr:`Instance.content_sha256`): content
        the instance already had is ``SAME``. With ``released_by``, the instance leaves the
        quarantine: its quarantine row goes and the release is audited in the same
        transaction.
        """
        for attempt in range(3):
            try:
                # a Core transaction, as Database.write() begins it (no ORM session: the
                # hot path)
                with self.db.write_engine.begin() as connection:
                    result = _index(connection, record, blob, door, aet, content_sha256)
                    if released_by is not None:
                        released(connection, record.instance.sop_instance_uid, released_by)
                    return result
            except IntegrityError:
                # A concurrent writer (PostgreSQL) inserted the same instance or parent row
                # between our read and our insert; the retry sees its row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _index(
    conn: Connection,
    record: InstanceRecord,
    blob: StoredBlob,
    door: str,
    aet: str | None,
    content_sha256: str | None,
) -> IndexResult:
    uid = record.instance.sop_instance_uid
    existing = conn.execute(_LOCK_INSTANCE, {"uid": uid}).one_or_none()
    if existing is not None:
        return _replace(conn, existing, record, blob, door, aet, content_sha256)

    changes: list[tuple[ChangeType, str]] = []
    known = conn.execute(_SERIES, {"uid": record.series.series_instance_uid}).one_or_none()
    if known is not None:
        series_pk, study_pk, patient_id, issuer = known
        if (patient_id, issuer) != (
            record.patient.patient_id,
            record.patient.issuer_of_patient_id,
        ):
            _link_patient(conn, record, study_pk, changes)
    else:
        source = f"{door}:{aet}" if aet else door
        study_pk = _create_parents(conn, record, changes, source)
        series_pk = _get_or_create(
            conn,
            Series,
            {
                **asdict(record.series),
                "study_pk": study_pk,
                "series_description_ci": fold(record.series.series_description),
            },
            "series_instance_uid",
            ChangeType.NEW_SERIES,
            changes,
        )
    created = any(kind is ChangeType.NEW_STUDY for kind, _ in changes)
    join_projects(conn, study_pk, record.projects + (record.new_study_projects if created else ()))
    conn.execute(
        _INSERT_INSTANCE,
        {
            **vars(record.instance),  # asdict() deep-copies: slower, and the values are flat
            "series_pk": series_pk,
            "blob_key": blob.key,
            "sha256": blob.sha256,
            "content_sha256": content_sha256,
            "size": blob.size,
            "version": 1,
            "metadata_json": record.metadata_json,
            "source_door": door,
            "source_aet": aet,
            "received_at": utcnow(),
        },
    )
    new_series = any(kind is ChangeType.NEW_SERIES for kind, _ in changes)
    conn.execute(_COUNT_SERIES, {"pk": series_pk})
    conn.execute(
        _COUNT_STUDY,
        {
            "pk": study_pk,
            "instances": 1,
            "series": int(new_series),
            "bytes": blob.size,
            "now": utcnow(),
        },
    )
    if new_series:
        _refresh_modalities(conn, study_pk)
    changes.append((ChangeType.NEW_INSTANCE, uid))
    now = utcnow()
    conn.execute(
        _INSERT_CHANGE,
        [{"change_type": kind, "resource_uid": ref, "created_at": now} for kind, ref in changes],
    )
    return IndexResult(IndexOutcome.NEW, version=1)


def _create_parents(
    conn: Connection, record: InstanceRecord, changes: list[tuple[ChangeType, str]], source: str
) -> int:
    """The study of a series seen for the first time (creating the study and patient, the
    study with the ``source`` of this, its first instance)."""
    patient_pk = _patient(conn, record, changes)
    study_pk = _get_or_create(
        conn,
        Study,
        {
            **asdict(record.study),
            "patient_pk": patient_pk,
            "study_description_ci": fold(record.study.study_description),
            "referring_physician_name_ci": fold(record.study.referring_physician_name),
            "referring_physician_name_fuzzy": name_key(record.study.referring_physician_name),
            "source": source,
        },
        "study_instance_uid",
        ChangeType.NEW_STUDY,
        changes,
    )
    _insert_ignoring_conflict(conn, StudyPatient, {"study_pk": study_pk, "patient_pk": patient_pk})
    return study_pk


def _patient(
    conn: Connection, record: InstanceRecord, changes: list[tuple[ChangeType, str]]
) -> int:
    return _get_or_create(
        conn,
        Patient,
        {
            **asdict(record.patient),
            "patient_name_ci": fold(record.patient.patient_name),
            "patient_name_fuzzy": name_key(record.patient.patient_name),
        },
        ("patient_id", "issuer_of_patient_id"),
        ChangeType.NEW_PATIENT,
        changes,
    )


def _link_patient(
    conn: Connection, record: InstanceRecord, study_pk: int, changes: list[tuple[ChangeType, str]]
) -> None:
    """Make ``record``'s patient one of the study's (a study found under each Patient ID its
    instances arrived with)."""
    patient_pk = _patient(conn, record, changes)
    _insert_ignoring_conflict(conn, StudyPatient, {"study_pk": study_pk, "patient_pk": patient_pk})


def join_projects(conn: Connection, study_pk: int, projects: tuple[str, ...]) -> None:
    """Make the study a member of ``projects`` (those it is in already stay)."""
    if not projects:
        return
    conn.execute(
        _JOIN_PROJECT[conn.dialect.name == "sqlite"],
        [{"study_pk": study_pk, "project": project} for project in projects],
    )


def _insert_ignoring_conflict(conn: Connection, model: type[Any], values: dict[str, Any]) -> None:
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    conn.execute(dialect_insert(model).values(**values).on_conflict_do_nothing())


def _replace(
    conn: Connection,
    existing: Any,
    record: InstanceRecord,
    blob: StoredBlob,
    door: str,
    aet: str | None,
    content_sha256: str | None,
) -> IndexResult:
    known = _contents(existing.content_sha256, existing.earlier_content_sha256)
    if existing.sha256 == blob.sha256 or content_sha256 in known:
        # Another writer indexed this content first (or it is a version already replaced).
        ours = blob.key if blob.key != existing.blob_key else None
        study_pk = conn.execute(
            select(Series.study_pk).where(Series.id == existing.series_pk)
        ).scalar_one()
        join_projects(conn, study_pk, record.projects)
        return IndexResult(IndexOutcome.SAME, existing.version, obsolete_blob_key=ours)
    version = existing.version + 1
    conn.execute(
        update(Instance)
        .where(Instance.id == existing.id)
        .values(
            blob_key=blob.key,
            sha256=blob.sha256,
            content_sha256=content_sha256,
            earlier_content_sha256=" ".join(known) or None,
            size=blob.size,
            version=version,
            metadata_json=record.metadata_json,
            transfer_syntax_uid=record.instance.transfer_syntax_uid,
            received_at=utcnow(),
            source_door=door,
            source_aet=aet,
            deid_method=record.instance.deid_method,
            deid_flag=record.instance.deid_flag,
        )
    )
    study_pk = conn.execute(
        select(Series.study_pk).where(Series.id == existing.series_pk)
    ).scalar_one()
    changes: list[tuple[ChangeType, str]] = []
    _link_patient(conn, record, study_pk, changes)  # the new version may name another
    join_projects(conn, study_pk, record.projects)
    conn.execute(
        _COUNT_STUDY,
        {
            "pk": study_pk,
            "instances": 0,
            "series": 0,
            "bytes": blob.size - existing.size,
            "now": utcnow(),
        },
    )
    changes.append((ChangeType.INSTANCE_REPLACED, record.instance.sop_instance_uid))
    now = utcnow()
    conn.execute(
        _INSERT_CHANGE,
        [{"change_type": kind, "resource_uid": ref, "created_at": now} for kind, ref in changes],
    )
    return IndexResult(IndexOutcome.REPLACED, version, obsolete_blob_key=existing.blob_key)


def _get_or_create(
    conn: Connection,
    model: type[Any],
    values: dict[str, Any],
    key: str | tuple[str, ...],
    change: ChangeType,
    changes: list[tuple[ChangeType, str]],
) -> int:
    """The primary key of the row with ``values[key]``, inserting it first if absent."""
    keys = (key,) if isinstance(key, str) else key
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    statement = (
        dialect_insert(model)
        .values(**values, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(model.id)
    )
    inserted = conn.execute(statement).scalar_one_or_none()
    if inserted is not None:
        changes.append((change, str(values[keys[0]])))
        return int(inserted)
    criteria = [getattr(model, name) == values[name] for name in keys]
    return int(conn.execute(select(model.id).where(*criteria)).scalar_one())


def _refresh_modalities(conn: Connection, study_pk: int) -> None:
    modalities = conn.scalars(
        select(func.distinct(Series.modality)).where(
            Series.study_pk == study_pk, Series.modality.is_not(None)
        )
    ).all()
    conn.execute(
        update(Study)
        .where(Study.id == study_pk)
        .values(modalities_in_study="\\".join(sorted(m for m in modalities if m)))
    )
