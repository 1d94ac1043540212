"""What a cohort is: a JSON-serializable, versioned definition (filters, balance, split)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from export.errors import CohortNotFoundError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
_GROUPING = re.compile(r"^(sex|modality|sequence|body_part|label:[A-Za-z0-9_.-]+)$")

MAX_ROW_ID: Final = 2**63 - 1
"""The largest id (or version) a catalog row can have: a signed 64-bit integer."""
MAX_COUNT: Final = 2**31 - 1
"""Bound of a count in a definition (instances per series, series per class)."""
MAX_AGE: Final = 200.0
MAX_SLICE_THICKNESS: Final = 10_000.0


@dataclass(frozen=True)
class CohortRef:
    """How a cohort is named: by ``id``, or by ``name`` (its latest version unless
    ``version``)."""

    id: int | None = None
    name: str | None = None
    version: int | None = None


def parse_cohort_ref(ref: str | int) -> CohortRef:
    """Read ``ID``, ``NAME`` or ``NAME@VERSION``.

    Raises :class:`CohortNotFoundError` for what no cohort can be called: a number beyond a
    64-bit id, a version that is not ASCII digits, a name that is not a cohort name.
    """
    text = str(ref)
    shown = repr(text) if len(text) <= 40 else f"{text[:32]!r}... ({len(text)} characters)"
    if _is_row_id(text):
        return CohortRef(id=int(text))
    name, at, version = text.partition("@")
    if at and not _is_row_id(version):
        raise CohortNotFoundError(
            f"no cohort {shown}: write name@version with a version from 1, e.g. {name[:40]}@1"
        )
    if not _NAME.match(name):
        raise CohortNotFoundError(f"no cohort {shown} (pacsnode cohort list shows them)")
    return CohortRef(name=name, version=int(version) if at else None)


def _is_row_id(text: str) -> bool:
    """ASCII digits for a number from 1 to :data:`MAX_ROW_ID` (``int()`` would also take
    "²", "١٢" or a 5,000-digit number, and the database would refuse them)."""
    digits = text.lstrip("0")
    return (
        text.isascii()
        and text.isdigit()
        and 0 < len(digits) <= len(str(MAX_ROW_ID))
        and int(digits) <= MAX_ROW_ID
    )


def check_cohort_name(name: str) -> str:
    """``name`` if it is a valid cohort name (a letter, then letters, digits, ``_.-``)."""
    if not _NAME.match(name):
        raise ValueError(
            f"invalid cohort name {name!r}: start with a letter, then up to 127 letters, "
            "digits, '_', '.' or '-'"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelFilter(_Strict):
    """Keep series whose study has a label of ``task`` (in ``classes``, if given)."""

    task: str = Field(min_length=1)
    classes: list[str] = Field(default_factory=list)
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    reviewed_only: bool = False


class Filters(_Strict):
    """Every filter is optional; lists match any of their values (case-insensitive)."""

    modalities: list[str] = Field(default_factory=list)
    sequences: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    sexes: list[Literal["M", "F", "O"]] = Field(default_factory=list)
    age_min: float | None = Field(default=None, ge=0, le=MAX_AGE, allow_inf_nan=False)
    age_max: float | None = Field(default=None, ge=0, le=MAX_AGE, allow_inf_nan=False)
    study_date_from: date | None = None
    study_date_to: date | None = None
    institutions: list[str] = Field(default_factory=list)
    min_instances: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    slice_thickness_min: float | None = Field(
        default=None, ge=0, le=MAX_SLICE_THICKNESS, allow_inf_nan=False
    )
    slice_thickness_max: float | None = Field(
        default=None, ge=0, le=MAX_SLICE_THICKNESS, allow_inf_nan=False
    )
    labels: list[LabelFilter] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_ranges(self) -> Filters:
        pairs = (
            ("age_min", "age_max"),
            ("study_date_from", "study_date_to"),
            ("slice_thickness_min", "slice_thickness_max"),
        )
        for low, high in pairs:
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{low} is greater than {high}")
        return self


class Balance(_Strict):
    """Class balancing by a grouping: the same count for each class, or at most ``cap``.

    ``by`` is ``label:<task>``, ``sex``, ``modality``, ``sequence`` or ``body_part``; series
    without a value for it are left out when balancing.
    """

    by: str
    mode: Literal["undersample", "cap"] = "undersample"
    cap: int | None = Field(default=None, ge=1, le=MAX_COUNT)

    @field_validator("by")
    @classmethod
    def _check_by(cls, value: str) -> str:
        return _check_grouping(value)

    @model_validator(mode="after")
    def _cap_needs_value(self) -> Balance:
        if self.mode == "cap" and self.cap is None:
            raise ValueError("balance mode 'cap' needs a cap (series per class)")
        return self


class Split(_Strict):
    """Train/validation/test by patient (no patient in two splits), stratified by ``by``."""

    fractions: dict[str, FiniteFloat] = Field(default_factory=dict)
    by: str | None = None

    @field_validator("by")
    @classmethod
    def _check_by(cls, value: str | None) -> str | None:
        return None if value is None else _check_grouping(value)

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if value:
            if any(f < 0 for f in value.values()) or abs(sum(value.values()) - 1.0) > 1e-6:
                raise ValueError("split fractions must be >= 0 and add up to 1")
            for name in value:
                if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
                    raise ValueError(f"invalid split name {name!r}")
        return value


class CohortDefinition(_Strict):
    """A cohort: which series, balanced how, split how, with which seed.

    The unit of a cohort is the series (a manifest row); its patient, study and labels come
    with it.
    """

    schema_version: Literal[1] = 1
    filters: Filters = Field(default_factory=Filters)
    balance: Balance | None = None
    split: Split | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_ROW_ID)

    def label_tasks(self) -> list[str]:
        """Every label task the definition names, in order of first mention."""
        tasks = [f.task for f in self.filters.labels]
        for grouping in (self.balance.by if self.balance else None, self.split_by()):
            if grouping and grouping.startswith("label:"):
                tasks.append(grouping.removeprefix("label:"))
        return list(dict.fromkeys(tasks))

    def split_by(self) -> str | None:
        """The split's stratification: its own, else the balancing's, else none."""
        if self.split is None:
            return None
        return self.split.by or (self.balance.by if self.balance else None)


def _check_grouping(value: str) -> str:
    if not _GROUPING.match(value):
        raise ValueError(
            f"cannot group by {value!r}: use label:<task>, sex, modality, sequence or body_part"
        )
    return value
