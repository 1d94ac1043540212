"""The dashboard's study filters that are not DICOM matching keys, as SQL conditions on
:class:`~catalog.models.Study` (added to a study-level query with ``Query.where``).

The names are those the Overview page passes to the study list: ``modality``, ``sex``,
``age`` (years, ``40-49``), ``task`` and ``class`` (a label and the class in force), ``month``
(``YYYY-MM`` of the study date) and ``source`` (the calling AE title an instance came from, or
its door when it came without one).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from sqlalchemy import ColumnElement, Integer, and_, case, cast, exists, func, not_, or_

from catalog.models import Instance, Label, Patient, Series, Study

AGE_UNITS: Final = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
"""Years per unit of an Age String (PS3.5 6.2 AS), as ``export.query.age_in_years``."""

_AGE = re.compile(r"([0-9]{1,3})-([0-9]{1,3})")
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_CODE = re.compile(r"[A-Za-z0-9_ -]{1,64}")


class FacetError(ValueError):
    """A filter value cannot be used; the message names the filter."""


@dataclass(frozen=True)
class StudyFacets:
    """Filters a study must pass (``None``: not filtered on)."""

    modality: str | None = None
    sex: str | None = None
    age: tuple[int, int] | None = None
    task: str | None = None
    value: int | None = None
    month: str | None = None
    source: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        modality: str | None = None,
        sex: str | None = None,
        age: str | None = None,
        task: str | None = None,
        value: str | None = None,
        month: str | None = None,
        source: str | None = None,
    ) -> StudyFacets:
        """The filters from their text (query parameters); :class:`FacetError` names a bad
        one (never quoting it)."""
        for name, given in (("modality", modality), ("sex", sex), ("task", task)):
            if given and not _CODE.fullmatch(given):
                raise FacetError(f"{name}: letters, digits, '_', '-' or space, up to 64")
        ages = None
        if age:
            matched = _AGE.fullmatch(age)
            if not matched or int(matched[1]) > int(matched[2]):
                raise FacetError("age: a range of years such as 40-49")
            ages = (int(matched[1]), int(matched[2]))
        if month and not _MONTH.fullmatch(month):
            raise FacetError("month: a month such as 2024-03")
        number = None
        if value:
            if value not in ("1", "0", "2", "-1"):
                raise FacetError("class: one of 1, 0, 2, -1")
            if not task:
                raise FacetError("class: needs a task")
            number = int(value)
        if source is not None and not 0 < len(source) <= 64:
            raise FacetError("source: an AE title or a door, up to 64 characters")
        return cls(
            modality=modality or None,
            sex=sex.upper() if sex else None,
            age=ages,
            task=task or None,
            value=number,
            month=month.replace("-", "") if month else None,
            source=source or None,
        )

    def conditions(self) -> tuple[ColumnElement[bool], ...]:
        """SQL conditions on ``Study`` (and its ``Patient``, joined by the study query)."""
        found: list[ColumnElement[bool]] = []
        if self.modality:
            found.append(
                exists().where(Series.study_pk == Study.id, Series.modality == self.modality)
            )
        if self.sex:
            found.append(func.upper(Patient.patient_sex) == self.sex)
        if self.age:
            found.append(age_between(*self.age))
        if self.task:
            label = exists().where(Label.study_pk == Study.id, Label.task == self.task)
            if self.value is not None:
                in_force = func.coalesce(Label.override_value, Label.value)
                label = label.where(in_force == self.value)
            found.append(label)
        if self.month:
            found.append(Study.study_date.between(f"{self.month}01", f"{self.month}31"))
        if self.source:
            found.append(
                exists()
                .where(Series.study_pk == Study.id, Instance.series_pk == Series.id)
                .where(
                    or_(
                        Instance.source_aet == self.source,
                        and_(
                            func.coalesce(Instance.source_aet, "") == "",
                            Instance.source_door == self.source,
                        ),
                    )
                )
            )
        return tuple(found)


def age_between(low: int, high: int) -> ColumnElement[bool]:
    """The age at the exam is ``low`` to ``high`` whole years: Patient's Age (``045Y``,
    ``006M``...) compared as text within each unit, else the years from the birth date to
    the study date (both stored shifted by the same offset)."""
    age = Study.patient_age
    by_unit = []
    for unit, years in AGE_UNITS.items():
        first = math.ceil(low / years - 1e-9)
        last = min(math.ceil((high + 1) / years - 1e-9) - 1, 999)
        if first <= last:
            by_unit.append(
                and_(age.like(f"___{unit}"), age.between(f"{first:03d}{unit}", f"{last:03d}{unit}"))
            )
    stated = or_(*(age.like(f"___{unit}") for unit in AGE_UNITS))
    birth, seen = Patient.patient_birth_date, Study.study_date
    whole_years = (
        cast(func.substr(seen, 1, 4), Integer)
        - cast(func.substr(birth, 1, 4), Integer)
        - case((func.substr(seen, 5, 4) < func.substr(birth, 5, 4), 1), else_=0)
    )
    from_dates = and_(
        not_(func.coalesce(stated, False)),
        func.length(birth) == 8,
        func.length(seen) == 8,
        whole_years.between(low, high),
    )
    return or_(*by_unit, from_dates)
