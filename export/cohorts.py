"""Saved cohorts: define (versioned), list, preview, freeze, and read back frozen members.

Projects: a cohort records the projects its studies are chosen from (``Cohort.projects``),
those of the caller who defined its first version (``None``: every project, for a caller who
sees them all, such as the operator's CLI). Its selection (preview, freeze, and so the
export) never holds a study outside them, and only a caller who sees every one of them sees
the cohort at all: to anyone else it does not exist. Every version of a name shares the
projects of its first version. Each operation takes the caller's ``projects`` (``None``:
every project).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from catalog import Database
from catalog.audit import record_audit
from catalog.models import Cohort, CohortInstance, CohortSeries, Instance, utcnow
from config.export import ExportSettings
from export.definition import CohortDefinition, check_cohort_name, parse_cohort_ref
from export.errors import (
    AlreadyFrozenError,
    CohortNameTakenError,
    CohortNotFoundError,
    EmptyCohortError,
    InvalidDefinitionError,
    NotFrozenError,
)
from export.labels import LabelSource, LabelTask
from export.query import SeriesRow, check_definition, resolve
from export.selection import balance, split
from export.sequences import SequenceMatcher

_CHUNK = 500
_PATIENT_IDENTITY_REMOVED = "00120062"
_DEIDENTIFICATION_METHOD = "00120063"
_DEIDENTIFICATION_CODES = "00120064"
_PINNED = (
    select(
        CohortInstance.instance_pk,
        CohortInstance.sop_instance_uid,
        CohortInstance.instance_number,
        CohortInstance.frames,
        CohortInstance.sha256,
        CohortInstance.size,
        Instance.blob_key,
        Instance.sha256.label("current_sha256"),
    )
    .outerjoin(Instance, Instance.id == CohortInstance.instance_pk)
    .where(CohortInstance.cohort_series_pk == bindparam("series"))
    .order_by(CohortInstance.position)
)


@dataclass(frozen=True)
class CohortInfo:
    """A cohort version as listed: name, version, definition, freeze state."""

    id: int
    name: str
    version: int
    description: str
    definition: CohortDefinition
    created_at: datetime
    frozen_at: datetime | None
    manifest_sha256: str | None
    series: int | None = None
    instances: int | None = None
    projects: tuple[str, ...] | None = None
    """The projects its studies are chosen from (``None``: every project)."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def scope(self) -> frozenset[str] | None:
        """The projects its studies are chosen from, as :meth:`Cohorts.select` takes them."""
        return None if self.projects is None else frozenset(self.projects)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "definition": self.definition.model_dump(mode="json"),
            "created_at": self.created_at.isoformat(),
            "frozen_at": self.frozen_at.isoformat() if self.frozen_at else None,
            "manifest_sha256": self.manifest_sha256,
            "series": self.series,
            "instances": self.instances,
            "projects": None if self.projects is None else list(self.projects),
        }


@dataclass(frozen=True)
class FrozenInstance:
    instance_pk: int
    sop_instance_uid: str
    instance_number: int | None
    frames: int
    sha256: str
    size: int


@dataclass(frozen=True)
class FrozenSeries:
    pk: int
    position: int
    series_uid: str
    study_uid: str
    patient_id: str
    split: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class FrozenCohort:
    """A frozen cohort as export reads it (members are loaded series by series)."""

    info: CohortInfo
    label_schema: Mapping[str, Any]
    deidentification: Mapping[str, Any]
    series: tuple[FrozenSeries, ...]

    @property
    def instance_count(self) -> int:
        return sum(int(s.attributes["instances"]) for s in self.series)


class Cohorts:
    """The cohort operations every door uses (CLI, HTTP API, dashboard).

    Parameters
    ----------
    db
        The catalog.
    settings
        The ``[export]`` settings (sequence synonyms, default seed and split, ...).
    labels
        Where label tasks and study labels come from.
    """

    def __init__(self, db: Database, settings: ExportSettings, labels: LabelSource) -> None:
        self.db = db
        self.settings = settings
        self.labels = labels
        self.matcher = SequenceMatcher(settings.sequences, settings.sequence_match_threshold)

    # ---------------------------------------------------------------------------- define

    def parse(self, definition: Mapping[str, Any] | CohortDefinition) -> CohortDefinition:
        """Validate a definition (JSON-like) against the schema, labels and sequences."""
        if not isinstance(definition, CohortDefinition):
            try:
                definition = CohortDefinition.model_validate(definition)
            except ValidationError as exc:
                raise InvalidDefinitionError(_validation_message(exc)) from None
        check_definition(definition, self.labels.tasks(), self.matcher)
        return definition

    def define(
        self,
        name: str,
        definition: Mapping[str, Any] | CohortDefinition,
        *,
        description: str = "",
        actor: str,
        projects: frozenset[str] | None = None,
    ) -> CohortInfo:
        """Save ``definition`` as the next version of cohort ``name`` (version 1 if new,
        over the caller's ``projects``; a new version keeps the projects of the first).

        Raises
        ------
        CohortNameTakenError
            ``name`` is a cohort over projects the caller does not see.
        """
        try:
            check_cohort_name(name)
        except ValueError as exc:
            raise InvalidDefinitionError(str(exc)) from None
        parsed = self.parse(definition)
        if parsed.split is not None and not parsed.split.fractions:
            parsed = parsed.model_copy(
                update={
                    "split": parsed.split.model_copy(
                        update={"fractions": dict(self.settings.default_split)}
                    )
                }
            )
        if parsed.seed is None:
            parsed = parsed.model_copy(update={"seed": self.settings.default_seed})
        with self.db.write() as session:
            latest = session.scalar(
                select(Cohort).where(Cohort.name == name).order_by(Cohort.version.desc()).limit(1)
            )
            if latest is None:
                scope = None if projects is None else _dump_projects(projects)
            elif _visible(latest, projects):
                scope = latest.projects
            else:
                raise CohortNameTakenError(
                    f"the cohort name {name!r} is taken: choose another name"
                )
            row = Cohort(
                name=name,
                version=(latest.version if latest else 0) + 1,
                description=description,
                definition_json=parsed.model_dump_json(),
                created_by=actor,
                projects=scope,
            )
            session.add(row)
            session.flush()
            record_audit(session, actor, "cohort_define", f"cohort:{name}@{row.version}")
            return _info(row)

    # ---------------------------------------------------------------------------- read

    def get(self, ref: str | int, projects: frozenset[str] | None = None) -> CohortInfo:
        """A cohort by id, ``name`` (its latest version) or ``name@version``, as a caller of
        ``projects`` finds it."""
        with self.db.read() as session:
            row = _find(session, ref, projects)
            return _info(row, *_member_counts(session, row))

    def all_versions(self, projects: frozenset[str] | None = None) -> list[CohortInfo]:
        """Every version of every cohort a caller of ``projects`` sees, by name then
        version."""
        with self.db.read() as session:
            rows = session.scalars(select(Cohort).order_by(Cohort.name, Cohort.version)).all()
            return [
                _info(row, *_member_counts(session, row)) for row in rows if _visible(row, projects)
            ]

    # ---------------------------------------------------------------------------- resolve

    def select(
        self, definition: CohortDefinition, projects: frozenset[str] | None = None
    ) -> list[SeriesRow]:
        """The cohort's series now: filtered, balanced and split as the definition says,
        among the studies of ``projects`` (``None``: every study)."""
        seed = definition.seed if definition.seed is not None else self.settings.default_seed
        with self.db.read() as session:
            rows = resolve(session, definition, self.labels, self.matcher, projects)
        if definition.balance is not None:
            rows = balance(rows, definition.balance, seed)
        if definition.split is not None:
            fractions = definition.split.fractions or self.settings.default_split
            rows = split(rows, fractions, definition.split_by(), seed)
        return rows

    def preview(
        self,
        subject: str | int | Mapping[str, Any] | CohortDefinition,
        projects: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        """Counts of what the cohort holds now (or holds, once frozen), nothing copied; of
        an unsaved definition, over the caller's ``projects``."""
        if isinstance(subject, str | int):
            info = self.get(subject, projects)
            scope = info.scope
            if info.frozen_at is not None:
                frozen = self.frozen(subject, projects)
                return {
                    "cohort": info.ref,
                    "frozen": True,
                    **_summary([_row_view(s) for s in frozen.series], self.settings.age_bin_years),
                }
            definition = info.definition
            head: dict[str, Any] = {"cohort": info.ref, "frozen": False}
        else:
            definition = self.parse(subject)
            head = {"cohort": None, "frozen": False}
            scope = projects
        rows = self.select(definition, scope)
        views = [_row_json(row) for row in rows]
        return {**head, **_summary(views, self.settings.age_bin_years)}

    # ---------------------------------------------------------------------------- freeze

    def freeze(
        self, ref: str | int, *, actor: str, projects: frozenset[str] | None = None
    ) -> CohortInfo:
        """Pin the cohort's series and instances now (of its projects' studies), with the
        hash of its manifest.

        Raises
        ------
        AlreadyFrozenError
            The version is frozen already (it never changes; define a new version).
        EmptyCohortError
            The filters match no series.
        """
        info = self.get(ref, projects)
        if info.frozen_at is not None:
            raise AlreadyFrozenError(
                f"cohort {info.ref} is already frozen (manifest {info.manifest_sha256}); "
                f"define it again to make version {info.version + 1}"
            )
        rows = self.select(info.definition, info.scope)
        if not rows:
            raise EmptyCohortError(
                f"cohort {info.ref} matches no series: nothing to freeze "
                "(pacsnode cohort preview shows what its filters match)"
            )
        tasks = self.labels.tasks()
        with self.db.write() as session:
            cohort = session.get(Cohort, info.id, with_for_update=True)
            assert cohort is not None
            if cohort.frozen_at is not None:
                raise AlreadyFrozenError(f"cohort {info.ref} was frozen meanwhile")
            series_rows, instance_rows = _pin(session, cohort.id, rows)
            frozen_json = {
                "label_schema": label_schema(tasks),
                "deidentification": _deidentification(session, [r.series_pk for r in rows]),
            }
            cohort.frozen_json = _canonical(frozen_json)
            cohort.manifest_sha256 = manifest_hash(
                info.definition, frozen_json, series_rows, instance_rows
            )
            cohort.frozen_at = utcnow()
            record_audit(session, actor, "cohort_freeze", f"cohort:{info.ref}")
            session.flush()
            return _info(cohort, len(series_rows), len(instance_rows))

    def frozen(self, ref: str | int, projects: frozenset[str] | None = None) -> FrozenCohort:
        """A frozen cohort's members (series) and what the freeze recorded."""
        with self.db.read() as session:
            cohort = _find(session, ref, projects)
            if cohort.frozen_at is None or cohort.frozen_json is None:
                raise NotFrozenError(
                    f"cohort {cohort.name}@{cohort.version} is not frozen: run "
                    f"`pacsnode cohort freeze {cohort.name}@{cohort.version}` first (an export "
                    "is always of a frozen cohort, so it can be repeated identically)"
                )
            extra = json.loads(cohort.frozen_json)
            members = session.scalars(
                select(CohortSeries)
                .where(CohortSeries.cohort_pk == cohort.id)
                .order_by(CohortSeries.position)
            ).all()
            series = tuple(
                FrozenSeries(
                    pk=m.id,
                    position=m.position,
                    series_uid=m.series_instance_uid,
                    study_uid=m.study_instance_uid,
                    patient_id=m.patient_id,
                    split=m.split,
                    attributes=json.loads(m.attributes_json),
                )
                for m in members
            )
            instances = sum(int(s.attributes["instances"]) for s in series)
            return FrozenCohort(
                info=_info(cohort, len(series), instances),
                label_schema=extra["label_schema"],
                deidentification=extra["deidentification"],
                series=series,
            )

    def frozen_instances(
        self, series: FrozenSeries
    ) -> list[tuple[FrozenInstance, str | None, str | None]]:
        """The pinned instances of one frozen series, in slice order, each with the blob key
        and SHA-256 the catalog holds for it now (``None`` if it was removed)."""
        with self.db.read() as session:
            return [
                (FrozenInstance(*r[:6]), r.blob_key, r.current_sha256)
                for r in session.execute(_PINNED, {"series": series.pk})
            ]

    def verify_hash(self, cohort: FrozenCohort) -> bool:
        """Whether the frozen rows still give the hash recorded at the freeze."""
        query = (
            select(
                CohortSeries.series_instance_uid,
                CohortInstance.sop_instance_uid,
                CohortInstance.instance_number,
                CohortInstance.frames,
                CohortInstance.sha256,
                CohortInstance.size,
            )
            .join(CohortSeries, CohortInstance.cohort_series_pk == CohortSeries.id)
            .where(CohortSeries.cohort_pk == cohort.info.id)
            .order_by(CohortSeries.position, CohortInstance.position)
        )
        extra = {"label_schema": cohort.label_schema, "deidentification": cohort.deidentification}
        series_rows = [_frozen_series_json(s) for s in cohort.series]
        with self.db.read() as session:
            instance_rows = (list(row) for row in session.execute(query))
            digest = manifest_hash(cohort.info.definition, extra, series_rows, instance_rows)
        return digest == cohort.info.manifest_sha256


# -------------------------------------------------------------------------------- helpers


def label_schema(tasks: Mapping[str, LabelTask]) -> dict[str, Any]:
    """The label schema as dataset.json shows it: task -> description and class meanings."""
    return {
        name: {
            "description": task.description,
            "classes": {c.value: c.meaning for c in task.classes},
        }
        for name, task in sorted(tasks.items())
    }


def manifest_hash(
    definition: CohortDefinition,
    extra: Mapping[str, Any],
    series_rows: Iterable[Mapping[str, Any]],
    instance_rows: Iterable[Sequence[Any]],
) -> str:
    """SHA-256 of the canonical JSON of everything a frozen cohort's manifests derive from."""
    digest = hashlib.sha256()
    digest.update(_canonical({"definition": definition.model_dump(mode="json"), **extra}).encode())
    for row in series_rows:
        digest.update(b"\n" + _canonical(row).encode())
    for instance in instance_rows:
        digest.update(b"\n" + _canonical(instance).encode())
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _row_json(row: SeriesRow) -> dict[str, Any]:
    """What a frozen series keeps of a matched row (its ``attributes_json``)."""
    return {
        "patient_id": row.patient_id,
        "study_uid": row.study_uid,
        "series_uid": row.series_uid,
        "split": row.split,
        "sex": row.sex,
        "age": row.age,
        "study_date": row.study_date,
        "modality": row.modality,
        "sequence": row.sequence,
        "series_description": row.series_description,
        "body_part": row.body_part,
        "institution": row.institution,
        "slice_thickness": row.slice_thickness,
        "instances": row.instances,
        "labels": {
            task: {
                "value": label.value,
                "confidence": label.confidence,
                "reviewed": label.reviewed,
                "overridden": label.overridden,
                "evidence": label.evidence,
            }
            for task, label in sorted(row.labels.items())
        },
    }


def _row_view(series: FrozenSeries) -> dict[str, Any]:
    return dict(series.attributes)


def _frozen_series_json(series: FrozenSeries) -> dict[str, Any]:
    return {"position": series.position, **series.attributes}


def _instance_json(series_uid: str, instance: FrozenInstance) -> list[Any]:
    return [
        series_uid,
        instance.sop_instance_uid,
        instance.instance_number,
        instance.frames,
        instance.sha256,
        instance.size,
    ]


def _pin(
    session: Session, cohort_pk: int, rows: Sequence[SeriesRow]
) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Insert the cohort's series and instance rows; return them as the hash sees them."""
    series_json: list[dict[str, Any]] = []
    instance_json: list[list[Any]] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        instances = _instances_of(session, [row.series_pk for row in chunk])
        for offset, row in enumerate(chunk):
            attributes = _row_json(row)
            members = instances.get(row.series_pk, [])
            attributes["instances"] = len(members)
            position = start + offset
            member_pk = session.execute(
                insert(CohortSeries).returning(CohortSeries.id),
                {
                    "cohort_pk": cohort_pk,
                    "position": position,
                    "series_pk": row.series_pk,
                    "series_instance_uid": row.series_uid,
                    "study_instance_uid": row.study_uid,
                    "patient_id": row.patient_id,
                    "split": row.split,
                    "attributes_json": _canonical(attributes),
                },
            ).scalar_one()
            series_json.append({"position": position, **attributes})
            if members:
                session.execute(
                    insert(CohortInstance),
                    [
                        {
                            "cohort_series_pk": member_pk,
                            "instance_pk": m.instance_pk,
                            "position": index,
                            "sop_instance_uid": m.sop_instance_uid,
                            "instance_number": m.instance_number,
                            "frames": m.frames,
                            "sha256": m.sha256,
                            "size": m.size,
                        }
                        for index, m in enumerate(members)
                    ],
                )
            instance_json.extend(_instance_json(row.series_uid, m) for m in members)
    return series_json, instance_json


def _instances_of(session: Session, series_pks: Sequence[int]) -> dict[int, list[FrozenInstance]]:
    found: dict[int, list[FrozenInstance]] = defaultdict(list)
    query = (
        select(
            Instance.series_pk,
            Instance.id,
            Instance.sop_instance_uid,
            Instance.instance_number,
            Instance.number_of_frames,
            Instance.sha256,
            Instance.size,
        )
        .where(Instance.series_pk.in_(series_pks))
        .order_by(Instance.series_pk, Instance.instance_number, Instance.sop_instance_uid)
    )
    for r in session.execute(query):
        found[r.series_pk].append(
            FrozenInstance(
                r.id,
                r.sop_instance_uid,
                r.instance_number,
                r.number_of_frames or 1,
                r.sha256,
                r.size,
            )
        )
    return found


def _deidentification(session: Session, series_pks: Sequence[int]) -> dict[str, Any]:
    """What the stored instances say about their de-identification (PS3.3 C.7.1.1).

    Read from the first instance of each series: Patient Identity Removed, De-identification
    Method and its code sequence (the PS3.15 options applied, e.g. 113100 Basic Profile).
    """
    removed: Counter[str] = Counter()
    methods: set[str] = set()
    codes: set[tuple[str, str, str]] = set()
    for start in range(0, len(series_pks), _CHUNK):
        chunk = series_pks[start : start + _CHUNK]
        first = (
            select(func.min(Instance.id))
            .where(Instance.series_pk.in_(chunk))
            .group_by(Instance.series_pk)
        )
        for (metadata,) in session.execute(
            select(Instance.metadata_json).where(Instance.id.in_(first))
        ):
            header = json.loads(metadata)
            removed[_first_text(header, _PATIENT_IDENTITY_REMOVED) or "absent"] += 1
            methods.update(_texts(header, _DEIDENTIFICATION_METHOD))
            for item in header.get(_DEIDENTIFICATION_CODES, {}).get("Value", []):
                codes.add(
                    (
                        _first_text(item, "00080100") or "",
                        _first_text(item, "00080102") or "",
                        _first_text(item, "00080104") or "",
                    )
                )
    return {
        "patient_identity_removed": dict(sorted(removed.items())),
        "methods": sorted(methods),
        "options": [
            {"code": code, "scheme": scheme, "meaning": meaning}
            for code, scheme, meaning in sorted(codes)
        ],
    }


def _texts(header: Mapping[str, Any], tag: str) -> list[str]:
    return [str(v) for v in header.get(tag, {}).get("Value", []) if v is not None]


def _first_text(header: Mapping[str, Any], tag: str) -> str | None:
    values = _texts(header, tag)
    return values[0] if values else None


def _summary(rows: Sequence[Mapping[str, Any]], age_bin: int) -> dict[str, Any]:
    """Counts for a preview: totals, per class, modality, sequence, sex, age bins, splits."""
    patients_sex: dict[str, str] = {}
    study_ages: dict[str, float | None] = {}
    classes: dict[str, Counter[str]] = defaultdict(Counter)
    splits: dict[str, dict[str, Any]] = {}
    for row in rows:
        patients_sex[row["patient_id"]] = row["sex"] or "unknown"
        study_ages[row["study_uid"]] = row["age"]
        for task, label in row["labels"].items():
            classes[task][label["value"]] += 1
        if row["split"]:
            entry = splits.setdefault(row["split"], {"patients": set(), "series": 0, "classes": {}})
            entry["patients"].add(row["patient_id"])
            entry["series"] += 1
            for task, label in row["labels"].items():
                counter = entry["classes"].setdefault(task, Counter())
                counter[label["value"]] += 1
    ages: Counter[str] = Counter()
    for age in study_ages.values():
        if age is None:
            ages["unknown"] += 1
        else:
            low = int(age // age_bin) * age_bin
            ages[f"{low}-{low + age_bin - 1}"] += 1
    return {
        "patients": len(patients_sex),
        "studies": len(study_ages),
        "series": len(rows),
        "instances": sum(int(row["instances"]) for row in rows),
        "classes": {task: dict(sorted(c.items())) for task, c in sorted(classes.items())},
        "modality": _count(rows, "modality"),
        "sequence": _count(rows, "sequence"),
        "body_part": _count(rows, "body_part"),
        "sex": dict(sorted(Counter(patients_sex.values()).items())),
        "age_histogram": dict(
            sorted(ages.items(), key=lambda kv: (kv[0] == "unknown", _bin_start(kv[0])))
        ),
        "splits": {
            name: {
                "patients": len(entry["patients"]),
                "series": entry["series"],
                "classes": {
                    t: dict(sorted(c.items())) for t, c in sorted(entry["classes"].items())
                },
            }
            for name, entry in sorted(splits.items())
        },
    }


def _count(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
    return dict(sorted(Counter(str(row[key] or "unknown") for row in rows).items()))


def _bin_start(label: str) -> int:
    return int(label.split("-")[0]) if label[0].isdigit() else 0


def _dump_projects(projects: frozenset[str]) -> str:
    return json.dumps(sorted(projects))


def _projects_of(row: Cohort) -> tuple[str, ...] | None:
    return None if row.projects is None else tuple(json.loads(row.projects))


def _visible(row: Cohort, projects: frozenset[str] | None) -> bool:
    """Whether a caller of ``projects`` (``None``: every project) sees the cohort: they
    see every project it is over."""
    if projects is None:
        return True
    mine = _projects_of(row)
    return mine is not None and projects.issuperset(mine)


def _find(session: Session, ref: str | int, projects: frozenset[str] | None) -> Cohort:
    wanted = parse_cohort_ref(ref)
    if wanted.id is not None:
        row = session.get(Cohort, wanted.id)
    elif wanted.version is not None:
        row = session.scalar(
            select(Cohort).where(Cohort.name == wanted.name, Cohort.version == wanted.version)
        )
    else:
        row = session.scalar(
            select(Cohort)
            .where(Cohort.name == wanted.name)
            .order_by(Cohort.version.desc())
            .limit(1)
        )
    if row is None or not _visible(row, projects):
        raise CohortNotFoundError(f"no cohort {str(ref)!r} (pacsnode cohort list shows them)")
    return row


def _member_counts(session: Session, cohort: Cohort) -> tuple[int | None, int | None]:
    if cohort.frozen_at is None:
        return None, None
    series = session.scalar(
        select(func.count()).select_from(CohortSeries).where(CohortSeries.cohort_pk == cohort.id)
    )
    instances = session.scalar(
        select(func.count())
        .select_from(CohortInstance)
        .join(CohortSeries, CohortInstance.cohort_series_pk == CohortSeries.id)
        .where(CohortSeries.cohort_pk == cohort.id)
    )
    return series, instances


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; the catalog writes UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _info(row: Cohort, series: int | None = None, instances: int | None = None) -> CohortInfo:
    created_at = _aware(row.created_at)
    assert created_at is not None
    return CohortInfo(
        id=row.id,
        name=row.name,
        version=row.version,
        description=row.description,
        definition=CohortDefinition.model_validate_json(row.definition_json),
        created_at=created_at,
        frozen_at=_aware(row.frozen_at),
        manifest_sha256=row.manifest_sha256,
        series=series,
        instances=instances,
        projects=_projects_of(row),
    )


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "definition"
        parts.append(f"{where}: {error['msg']}")
    return "invalid cohort definition: " + "; ".join(parts)
