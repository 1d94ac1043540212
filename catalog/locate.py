"""Where the instances of a study, series or instance are stored (WADO-RS, C-GET, C-MOVE).

Each call is one catalog read; instances come in the stable order of :mod:`catalog.query`
(series by Series Number, instances by Instance Number). :func:`locate` serves one study (or
series, or instance) as WADO-RS asks; :func:`locate_keys` serves the unique keys of a C-MOVE
or C-GET (a patient, UID lists at any level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVarTuple

from sqlalchemy import Select, select

from catalog.db import Database
from catalog.models import Instance, Patient, Series, Study, StudyPatient
from catalog.projects import in_projects


@dataclass(frozen=True)
class StoredInstance:
    """An instance's identity and where its blob is (UIDs are the stored ones)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    sha256: str
    size: int
    number_of_frames: int | None
    rows: int | None


_Columns = TypeVarTuple("_Columns")


def _scoped(
    statement: Select[*_Columns],
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    projects: frozenset[str] | None,
) -> Select[*_Columns]:
    statement = (
        statement.select_from(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid)
    )
    if projects is not None:
        statement = statement.where(in_projects(Study.id, projects))
    if series_uid is not None:
        statement = statement.where(Series.series_instance_uid == series_uid)
    if sop_uid is not None:
        statement = statement.where(Instance.sop_instance_uid == sop_uid)
    return statement.order_by(
        Series.series_number.asc().nulls_last(),
        Series.id,
        Instance.instance_number.asc().nulls_last(),
        Instance.id,
    )


def locate(
    db: Database,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    *,
    projects: frozenset[str] | None = None,
) -> list[StoredInstance]:
    """The stored instances of a study (or of one of its series, or one instance); a study
    outside ``projects`` (when given) has none."""
    statement = select(
        Study.study_instance_uid,
        Series.series_instance_uid,
        Instance.sop_instance_uid,
        Instance.sop_class_uid,
        Instance.transfer_syntax_uid,
        Instance.blob_key,
        Instance.sha256,
        Instance.size,
        Instance.number_of_frames,
        Instance.rows,
    )
    with db.read() as session:
        rows = session.execute(_scoped(statement, study_uid, series_uid, sop_uid, projects)).all()
    return [StoredInstance(**row._asdict()) for row in rows]


def stored_metadata(
    db: Database,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    *,
    projects: frozenset[str] | None = None,
) -> list[tuple[str, str]]:
    """``(sha256, DICOM JSON text)`` of each instance, as stored at ingest."""
    statement = select(Instance.sha256, Instance.metadata_json)
    with db.read() as session:
        rows = session.execute(_scoped(statement, study_uid, series_uid, sop_uid, projects)).all()
    return [(sha, text) for sha, text in rows]


def study_exists(
    db: Database,
    study_uid: str,
    series_uid: str | None = None,
    *,
    projects: frozenset[str] | None = None,
) -> bool:
    """Whether the study (and the series within it) is in the catalog, and in ``projects``
    when given."""
    statement = select(Study.id).where(Study.study_instance_uid == study_uid)
    if series_uid is not None:
        statement = (
            select(Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid, Series.series_instance_uid == series_uid)
        )
    if projects is not None:
        statement = statement.where(in_projects(Study.id, projects))
    with db.read() as session:
        return session.execute(statement.limit(1)).first() is not None


@dataclass(frozen=True)
class RetrieveKeys:
    """The unique keys of a retrieve, one tuple of values per level; an empty tuple does not
    constrain its level. Several values at one level are alternatives (a UID list)."""

    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.patient_ids or self.study_uids or self.series_uids or self.sop_instance_uids):
            raise ValueError("a retrieve needs at least one unique key")


_CHUNK = 500  # values per IN (...) list, well under every database's parameter limit


def locate_keys(
    db: Database, keys: RetrieveKeys, *, projects: frozenset[str] | None = None
) -> list[StoredInstance]:
    """The stored instances matching every given key, study by study in the stable order
    (only studies of ``projects``, when given)."""
    columns = (
        (Patient.patient_id, keys.patient_ids),
        (Study.study_instance_uid, keys.study_uids),
        (Series.series_instance_uid, keys.series_uids),
        (Instance.sop_instance_uid, keys.sop_instance_uids),
    )
    statement = (
        select(
            Study.study_instance_uid,
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.blob_key,
            Instance.sha256,
            Instance.size,
            Instance.number_of_frames,
            Instance.rows,
        )
        .select_from(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .order_by(
            Study.id,
            Series.series_number.asc().nulls_last(),
            Series.id,
            Instance.instance_number.asc().nulls_last(),
            Instance.id,
        )
    )
    if projects is not None:
        statement = statement.where(in_projects(Study.id, projects))
    if keys.patient_ids:  # any patient the study's instances arrived under
        statement = statement.join(StudyPatient, StudyPatient.study_pk == Study.id).join(
            Patient, StudyPatient.patient_pk == Patient.id
        )
    # The longest list is split into chunks; the others (short in practice) go whole.
    longest = max(range(len(columns)), key=lambda index: len(columns[index][1]))
    for index, (column, values) in enumerate(columns):
        if values and index != longest:
            statement = statement.where(column.in_(values))
    column, values = columns[longest]
    found: dict[str, StoredInstance] = {}
    with db.read() as session:
        for start in range(0, len(values), _CHUNK):
            chunk = statement.where(column.in_(values[start : start + _CHUNK]))
            for row in session.execute(chunk).all():
                found.setdefault(row.sop_instance_uid, StoredInstance(**row._asdict()))
    return list(found.values())
