"""Resolve a cohort's filters against the catalog: the matching series, with what they carry.

Filters the catalog can answer (modality, body part, sex, dates, institution, counts, slice
thickness) go into SQL; age at exam, sequence family and labels are decided in Python,
after the SQL narrowed the rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from catalog import normalize
from catalog.models import Patient, Series, Study
from catalog.projects import in_projects
from export.definition import CohortDefinition, Filters
from export.errors import InvalidDefinitionError
from export.labels import LabelSource, LabelTask, StudyLabel
from export.sequences import SequenceMatcher

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_CHUNK = 500


@dataclass(frozen=True)
class SeriesRow:
    """One series that a cohort's filters matched: the unit of balancing, splits, manifests."""

    series_pk: int
    series_uid: str
    study_uid: str
    patient_id: str
    sex: str | None
    age: float | None
    study_date: str | None
    modality: str | None
    sequence: str | None
    series_description: str | None
    body_part: str | None
    institution: str | None
    slice_thickness: float | None
    instances: int
    labels: Mapping[str, StudyLabel] = field(default_factory=dict)
    split: str = ""

    def group(self, by: str) -> str | None:
        """The value of a grouping (``sex``, ``modality``, ``label:<task>``, ...)."""
        if by.startswith("label:"):
            label = self.labels.get(by.removeprefix("label:"))
            return label.value if label else None
        value: str | None = getattr(self, by)
        return value

    def with_split(self, split: str) -> SeriesRow:
        return replace(self, split=split)


def age_in_years(patient_age: str | None, birth: str | None, study: str | None) -> float | None:
    """Age at the exam: PatientAge (``045Y``, ``006M``, ...), else birth date to study date.

    Both dates are the stored (shifted) ones; a per-patient shift keeps the interval.
    """
    if patient_age and (match := _AGE.match(patient_age.strip().upper())):
        return round(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)], 2)
    born, seen = _parse_date(birth), _parse_date(study)
    if born is None or seen is None or seen < born:
        return None
    return round((seen - born).days / 365.25, 2)


def check_definition(
    definition: CohortDefinition, tasks: Mapping[str, LabelTask], matcher: SequenceMatcher
) -> None:
    """Raise :class:`InvalidDefinitionError` for an unknown label task, class or sequence."""
    for task in definition.label_tasks():
        if task not in tasks:
            known = ", ".join(sorted(tasks)) or "none: no labels have been derived yet"
            raise InvalidDefinitionError(f"unknown label task {task!r} (known tasks: {known})")
    for label_filter in definition.filters.labels:
        schema = tasks[label_filter.task]
        for value in label_filter.classes:
            if not schema.has_class(value):
                classes = ", ".join(f"{c.value} = {c.meaning}" for c in schema.classes)
                raise InvalidDefinitionError(
                    f"unknown class {value!r} for label task {schema.name!r} (classes: {classes})"
                )
    for sequence in definition.filters.sequences:
        if matcher.family_named(sequence) is None:
            raise InvalidDefinitionError(
                f"unknown sequence {sequence!r} (configured: {', '.join(matcher.names)}; "
                "see export.sequences)"
            )


def resolve(
    session: Session,
    definition: CohortDefinition,
    labels: LabelSource,
    matcher: SequenceMatcher,
    projects: frozenset[str] | None = None,
) -> list[SeriesRow]:
    """Every series matching ``definition.filters`` (of a study of ``projects`` when
    given), ordered by patient, study and series.

    Each row carries the labels of every known task, not only of those the filters name.
    """
    filters = definition.filters
    tasks = sorted(set(labels.tasks()) | set(definition.label_tasks()))
    sequences = {matcher.family_named(s) for s in filters.sequences}
    candidates = _candidates(session, filters, matcher, projects)
    rows = [row for row in candidates if _keep(row, filters, sequences)]
    if not tasks:
        return rows
    found: dict[str, Sequence[StudyLabel]] = {}
    study_uids = sorted({row.study_uid for row in rows})
    for start in range(0, len(study_uids), _CHUNK):
        found.update(labels.study_labels(session, study_uids[start : start + _CHUNK], tasks))
    labelled = [
        replace(row, labels={label.task: label for label in found.get(row.study_uid, ())})
        for row in rows
    ]
    return [row for row in labelled if _labels_match(row, filters)]


def _candidates(
    session: Session,
    filters: Filters,
    matcher: SequenceMatcher,
    projects: frozenset[str] | None,
) -> Iterator[SeriesRow]:
    query = _select(filters)
    if projects is not None:
        query = query.where(in_projects(Study.id, projects))
    for r in session.execute(query):
        yield SeriesRow(
            series_pk=r.series_pk,
            series_uid=r.series_instance_uid,
            study_uid=r.study_instance_uid,
            patient_id=r.patient_id,
            sex=normalize.sex(r.patient_sex),  # rows indexed before it was normalised
            age=age_in_years(r.patient_age, r.patient_birth_date, r.study_date),
            study_date=r.study_date,
            modality=r.modality,
            sequence=matcher.classify(r.series_description, r.protocol_name, r.sequence_name),
            series_description=r.series_description,
            body_part=r.body_part_examined,
            institution=r.series_institution or r.study_institution,
            slice_thickness=r.slice_thickness,
            instances=r.number_of_instances,
        )


def _select(filters: Filters) -> Select[*tuple[Any, ...]]:
    query: Select[*tuple[Any, ...]] = (
        select(
            Series.id.label("series_pk"),
            Series.series_instance_uid,
            Series.modality,
            Series.series_description,
            Series.protocol_name,
            Series.sequence_name,
            Series.body_part_examined,
            Series.slice_thickness,
            Series.number_of_instances,
            Series.institution_name.label("series_institution"),
            Study.study_instance_uid,
            Study.study_date,
            Study.patient_age,
            Study.institution_name.label("study_institution"),
            Patient.patient_id,
            Patient.patient_sex,
            Patient.patient_birth_date,
        )
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Series.number_of_instances > 0)
        .order_by(
            Patient.patient_id,
            Study.study_date,
            Study.study_instance_uid,
            Series.series_number,
            Series.series_instance_uid,
        )
    )
    if filters.modalities:
        query = query.where(
            func.upper(Series.modality).in_([m.upper() for m in filters.modalities])
        )
    if filters.body_parts:
        wanted = [b.upper() for b in filters.body_parts]
        query = query.where(func.upper(Series.body_part_examined).in_(wanted))
    if filters.sexes:
        query = query.where(func.upper(Patient.patient_sex).in_(filters.sexes))
    if filters.study_date_from:
        query = query.where(Study.study_date >= filters.study_date_from.strftime("%Y%m%d"))
    if filters.study_date_to:
        query = query.where(Study.study_date <= filters.study_date_to.strftime("%Y%m%d"))
    if filters.institutions:
        wanted = [i.upper() for i in filters.institutions]
        query = query.where(
            or_(
                func.upper(Series.institution_name).in_(wanted),
                func.upper(Study.institution_name).in_(wanted),
            )
        )
    if filters.min_instances:
        query = query.where(Series.number_of_instances >= filters.min_instances)
    if filters.slice_thickness_min is not None:
        query = query.where(Series.slice_thickness >= filters.slice_thickness_min)
    if filters.slice_thickness_max is not None:
        query = query.where(Series.slice_thickness <= filters.slice_thickness_max)
    return query


def _keep(row: SeriesRow, filters: Filters, sequences: set[str | None]) -> bool:
    if filters.age_min is not None and (row.age is None or row.age < filters.age_min):
        return False
    if filters.age_max is not None and (row.age is None or row.age > filters.age_max):
        return False
    return not sequences or row.sequence in sequences


def _labels_match(row: SeriesRow, filters: Filters) -> bool:
    for wanted in filters.labels:
        label = row.labels.get(wanted.task)
        if label is None:
            return False
        if wanted.classes and label.value not in wanted.classes:
            return False
        if wanted.min_confidence is not None and (
            label.confidence is None or label.confidence < wanted.min_confidence
        ):
            return False
        if wanted.reviewed_only and not label.reviewed:
            return False
    return True


def _parse_date(value: str | None) -> date | None:
    if not value or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None
