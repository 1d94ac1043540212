"""What the archive holds, counted in SQL: the dashboard's overview and dataset pages.

Every figure is an aggregate query (``GROUP BY`` in the database); nothing loads the rows
of a table into Python. The unit of a distribution is the study (a study with a CT and an
MR series counts once under each modality), except sequence families, which count series.

Every figure is restricted by the same :class:`StatsFilter` (modality, sex, age group,
label class, study month, source, body part) and by the caller's projects. A distribution
ignores the filter on its own dimension (the bar clicked stays beside the others: the
cross-filtering of dashboards); the counts apply every filter.

Derived dimensions, as stored:

- age group: the decade of ``PatientAge`` (``045Y`` -> 40; months, weeks, days -> 0), else
  of the interval from birth date to study date (both shifted alike by de-identification);
- source: the door (and calling AE title) the study's first instance came through;
- ingest over time: studies by ``study.created_at`` and instances by the arrival of their
  series (``series.created_at``), in UTC: the instance table is never scanned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    distinct,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from catalog.db import Database
from catalog.models import Label, Patient, ReportLink, Series, Study
from catalog.projects import in_projects

Dimension = Literal["modality", "sex", "age", "label", "month", "source", "body_part"]
DIMENSIONS: Final[tuple[Dimension, ...]] = (
    "modality",
    "sex",
    "age",
    "label",
    "month",
    "source",
    "body_part",
)
SequenceFamilyOf = Callable[[str | None, str | None, str | None], str | None]
"""The sequence family of a series from its description, protocol and sequence name."""


@dataclass(frozen=True)
class StatsFilter:
    """Which studies the figures count (every field set must hold).

    ``labels`` holds ``(task, class)`` pairs (the class in force: a reviewer's wins);
    ``task`` keeps the studies that address a label task (a class other than -1), as a
    dataset page does; ``age`` is the start of a decade (40: 40-49 years).
    """

    modality: str | None = None
    sex: str | None = None
    age: int | None = None
    labels: tuple[tuple[str, int], ...] = ()
    month: str | None = None
    source: str | None = None
    body_part: str | None = None
    task: str | None = None

    def without(self, dimension: Dimension) -> StatsFilter:
        """The same filter without the one on ``dimension``."""
        if dimension == "label":
            return replace(self, labels=())
        cleared: dict[str, Any] = {dimension: None}
        return replace(self, **cleared)


@dataclass(frozen=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
    reports: int
    """Reports linked to the studies."""
    labelled_studies: int
    """Studies with a label of at least one task."""


@dataclass(frozen=True)
class Bucket:
    key: str | None
    """The value (``None``: not recorded)."""
    count: int


@dataclass(frozen=True)
class LabelBucket:
    task: str
    value: int
    count: int


@dataclass(frozen=True)
class TimeBucket:
    at: str
    """``YYYY-MM-DD`` (per day) or ``YYYY-MM-DD HH`` (per hour), UTC."""
    studies: int
    instances: int


@dataclass(frozen=True)
class Ingest:
    per_day: list[TimeBucket]
    per_hour: list[TimeBucket]
    days: int
    hours: int


@dataclass(frozen=True)
class Overview:
    counts: Counts
    labels: list[LabelBucket]
    modality: list[Bucket]
    sex: list[Bucket]
    age: list[Bucket]
    body_part: list[Bucket]
    sequence: list[Bucket]
    """Series per sequence family."""
    month: list[Bucket]
    source: list[Bucket]
    ingest: Ingest | None = None
    filters: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------- derived columns


class _Day(FunctionElement[str]):
    """A timestamp's UTC day ``YYYY-MM-DD`` (``hour=True``: ``YYYY-MM-DD HH``)."""

    type = String()
    inherit_cache = True
    name = "pn_day"


class _Hour(_Day):
    inherit_cache = True
    name = "pn_hour"


@compiles(_Day)
def _day_sqlite(element: _Day, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy keeps SQLite timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text (in UTC here)
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(_Hour)
def _hour_sqlite(element: _Hour, compiler: SQLCompiler, **kw: Any) -> str:
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 13)"


@compiles(_Day, "postgresql")
def _day_postgresql(element: _Day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(_Hour, "postgresql")
def _hour_postgresql(element: _Hour, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"


def _digit(text: ColumnElement[str]) -> ColumnElement[bool]:
    return text.between("0", "9")


def _age_decade() -> ColumnElement[int | None]:
    """The decade (4 for 40-49 years) of the study's patient, as the module docstring says."""
    age = Study.patient_age
    valid_age = and_(
        func.length(age) == 4,
        *(_digit(func.substr(age, i, 1)) for i in (1, 2, 3)),
        func.substr(age, 4, 1).in_(("Y", "M", "W", "D")),
    )
    born, seen = Patient.patient_birth_date, Study.study_date
    return case(
        (and_(valid_age, func.substr(age, 4, 1) == "Y"), cast(func.substr(age, 1, 2), Integer)),
        (valid_age, literal(0)),
        (
            and_(seen.is_not(None), born.is_not(None), seen >= born),
            # YYYYMMDD as numbers: their difference / 10000 is the age in whole years
            (cast(seen, Integer) - cast(born, Integer)) // 100000,
        ),
        else_=None,
    )


def _sex() -> ColumnElement[str | None]:
    return func.upper(Patient.patient_sex)


def _month() -> ColumnElement[str | None]:
    return func.substr(Study.study_date, 1, 6)


def _class() -> ColumnElement[int]:
    """The class in force: a reviewer's, else the one derived."""
    return func.coalesce(Label.override_value, Label.value)


def _has_series(column: str, value: str) -> ColumnElement[bool]:
    # aliased: the queries that join series must not correlate these to their own rows
    series = aliased(Series)
    return (
        exists()
        .where(series.study_pk == Study.id, func.upper(getattr(series, column)) == value.upper())
        .correlate(Study)
    )


def _has_label(task: str, value: int | None) -> ColumnElement[bool]:
    """The study has ``value`` for ``task`` (``None``: any class but -1, not addressed)."""
    label = aliased(Label)
    in_force = func.coalesce(label.override_value, label.value)
    return (
        exists()
        .where(
            label.study_pk == Study.id,
            label.task == task,
            in_force != -1 if value is None else in_force == value,
        )
        .correlate(Study)
    )


def _conditions(filters: StatsFilter, projects: frozenset[str] | None) -> list[ColumnElement[bool]]:
    """The WHERE of a query over ``study JOIN patient``."""
    found: list[ColumnElement[bool]] = []
    if projects is not None:
        found.append(in_projects(Study.id, projects))
    if filters.modality:
        found.append(_has_series("modality", filters.modality))
    if filters.body_part:
        found.append(_has_series("body_part_examined", filters.body_part))
    if filters.sex:
        found.append(_sex() == filters.sex.upper())
    if filters.age is not None:
        found.append(_age_decade() == filters.age // 10)
    if filters.month:
        found.append(_month() == filters.month)
    if filters.source:
        found.append(Study.source == filters.source)
    found.extend(_has_label(task, value) for task, value in filters.labels)
    if filters.task:
        found.append(_has_label(filters.task, None))
    return found


def _studies(*columns: Any) -> Select[Any]:
    return select(*columns).select_from(Study).join(Patient, Patient.id == Study.patient_pk)


# --------------------------------------------------------------------------- the figures


class Statistics:
    """The figures of the catalog ``db``.

    Parameters
    ----------
    db
        The catalog.
    sequence_family
        Names a series' sequence family (``export.sequences``); without it a series counts
        under its description.
    """

    def __init__(self, db: Database, sequence_family: SequenceFamilyOf | None = None) -> None:
        self.db = db
        self.sequence_family = sequence_family

    def overview(
        self,
        filters: StatsFilter,
        projects: frozenset[str] | None,
        *,
        days: int | None = 30,
        hours: int = 48,
        now: datetime | None = None,
    ) -> Overview:
        """Counts and every distribution (and, unless ``days`` is None, ingest over the last
        ``days`` days and ``hours`` hours), in one read transaction."""
        with self.db.read() as session:

            def where(dimension: Dimension | None) -> list[ColumnElement[bool]]:
                own = filters.without(dimension) if dimension else filters
                return _conditions(own, projects)

            return Overview(
                counts=_counts(session, where(None)),
                labels=_labels(session, filters, projects),
                modality=_series_buckets(session, Series.modality, where("modality")),
                sex=_buckets(session, _sex(), where("sex")),
                age=sorted(
                    (
                        Bucket(None if b.key is None else str(int(b.key) * 10), b.count)
                        for b in _buckets(session, _age_decade(), where("age"))
                    ),
                    key=lambda b: (b.key is None, int(b.key or 0)),
                ),
                body_part=_series_buckets(
                    session, func.upper(Series.body_part_examined), where("body_part")
                ),
                sequence=self._sequences(session, filters, where(None)),
                month=sorted(
                    _buckets(session, _month(), where("month")),
                    key=lambda b: (b.key is None, b.key or ""),
                ),
                source=_buckets(session, Study.source, where("source")),
                ingest=None
                if days is None
                else _ingest(session, where(None), days, hours, now or datetime.now(UTC)),
                filters=_as_json(filters),
            )

    def label_counts(
        self, filters: StatsFilter, projects: frozenset[str] | None
    ) -> list[LabelBucket]:
        """Studies per label task and class (a task's own class filter does not restrict
        its counts)."""
        with self.db.read() as session:
            return _labels(session, filters, projects)

    def _sequences(
        self, session: Session, filters: StatsFilter, where: list[ColumnElement[bool]]
    ) -> list[Bucket]:
        names = (Series.series_description, Series.protocol_name, Series.sequence_name)
        query = (
            _studies(*names, func.count())
            .join(Series, Series.study_pk == Study.id)
            .where(*where)
            .group_by(*names)
        )
        if filters.modality:  # series of that modality only
            query = query.where(func.upper(Series.modality) == filters.modality.upper())
        counted: Counter[str | None] = Counter()
        for description, protocol, sequence, count in session.execute(query):
            family = (
                self.sequence_family(description, protocol, sequence)
                if self.sequence_family
                else description
            )
            counted[family] += count
        return _sorted(counted.items())


def _counts(session: Session, where: list[ColumnElement[bool]]) -> Counts:
    studies = _studies(Study.id).where(*where)
    patients, study_count, series, instances, size = session.execute(
        _studies(
            func.count(distinct(Study.patient_pk)),
            func.count(),
            func.coalesce(func.sum(Study.number_of_series), 0),
            func.coalesce(func.sum(Study.number_of_instances), 0),
            func.coalesce(func.sum(Study.total_bytes), 0),
        ).where(*where)
    ).one()
    reports = session.scalar(
        select(func.count(distinct(ReportLink.report_pk))).where(ReportLink.study_pk.in_(studies))
    )
    labelled = session.scalar(
        select(func.count(distinct(Label.study_pk))).where(Label.study_pk.in_(studies))
    )
    return Counts(
        int(patients),
        int(study_count),
        int(series),
        int(instances),
        int(size),
        int(reports or 0),
        int(labelled or 0),
    )


def _buckets(session: Session, key: Any, where: list[ColumnElement[bool]]) -> list[Bucket]:
    """Studies per value of ``key`` (an expression over study and patient)."""
    inner = _studies(key.label("key")).where(*where).subquery()
    rows = session.execute(select(inner.c.key, func.count()).group_by(inner.c.key))
    return _sorted((None if k is None else str(k), int(n)) for k, n in rows)


def _series_buckets(session: Session, key: Any, where: list[ColumnElement[bool]]) -> list[Bucket]:
    """Studies per value of a series column (a study counts once per value it has)."""
    query = (
        _studies(key, func.count(distinct(Study.id)))
        .join(Series, Series.study_pk == Study.id)
        .where(*where)
        .group_by(key)
    )
    return _sorted((k, int(n)) for k, n in session.execute(query))


def _labels(
    session: Session, filters: StatsFilter, projects: frozenset[str] | None
) -> list[LabelBucket]:
    """Studies per task and class; a task's own class filter does not restrict it."""
    filtered = {task for task, _ in filters.labels}
    found: list[LabelBucket] = []

    def count(where: list[ColumnElement[bool]], *tasks: ColumnElement[bool]) -> None:
        query = (
            _studies(Label.task, _class(), func.count())
            .join(Label, Label.study_pk == Study.id)
            .where(*where, *tasks)
            .group_by(Label.task, _class())
        )
        found.extend(LabelBucket(t, int(v), int(n)) for t, v, n in session.execute(query))

    count(_conditions(filters, projects), Label.task.not_in(sorted(filtered)))
    for task in sorted(filtered):
        others = tuple(pair for pair in filters.labels if pair[0] != task)
        count(_conditions(replace(filters, labels=others), projects), Label.task == task)
    return sorted(found, key=lambda b: (b.task, b.value))


def _ingest(
    session: Session, where: list[ColumnElement[bool]], days: int, hours: int, now: datetime
) -> Ingest:
    def per(bucket: type[_Day], since: datetime) -> list[TimeBucket]:
        study_at = bucket(Study.created_at)
        studies: dict[str, int] = {
            at: n
            for at, n in session.execute(
                _studies(study_at, func.count())
                .where(*where, Study.created_at >= since)
                .group_by(study_at)
            )
        }
        series_at = bucket(Series.created_at)
        instances: dict[str, int | None] = {
            at: n
            for at, n in session.execute(
                _studies(series_at, func.sum(Series.number_of_instances))
                .join(Series, Series.study_pk == Study.id)
                .where(*where, Series.created_at >= since)
                .group_by(series_at)
            )
        }
        return [
            TimeBucket(at, int(studies.get(at, 0)), int(instances.get(at) or 0))
            for at in sorted(set(studies) | set(instances))
        ]

    return Ingest(
        per_day=per(_Day, now - timedelta(days=days)),
        per_hour=per(_Hour, now - timedelta(hours=hours)),
        days=days,
        hours=hours,
    )


def _sorted(pairs: Any) -> list[Bucket]:
    """Largest first, then by value (unrecorded last)."""
    buckets = [Bucket(k, n) for k, n in pairs]
    return sorted(buckets, key=lambda b: (b.key is None, -b.count, b.key or ""))


def _as_json(filters: StatsFilter) -> dict[str, Any]:
    shown: dict[str, Any] = {
        name: getattr(filters, name)
        for name in ("modality", "sex", "age", "month", "source", "body_part", "task")
        if getattr(filters, name) is not None
    }
    if filters.labels:
        shown["label"] = [f"{task}:{value}" for task, value in filters.labels]
    return shown
