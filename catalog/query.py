"""The one implementation of DICOM query matching: QIDO-RS and C-FIND both call it.

Public surface::

    query = parse_query(QueryLevel.STUDY, {"PatientID": "ABC", "StudyDate": "20240101-"},
                        include=["00081030"], fuzzy=True, limit=101)
    result = run_query(db, query)      # QueryResult(rows, more_available)

``parse_query`` takes attribute keys (keywords such as ``PatientID`` or tags such as
``00100020``) and their values as text, with the matching rules of PS3.4 C.2.2.2 and PS3.18
8.3.4: single value, UID lists (``,`` or ``\\``), wildcards ``*`` and ``?``, date and time
ranges (``a-b``, ``a-``, ``-b``), universal matching (empty value or ``*``), empty-value
matching (``""``) and, for person names, case- and accent-insensitive literal matching plus
optional fuzzy matching (every word of the query is a word prefix or sounds like a word of
the name, in any order). A bad key or value raises :class:`QueryError` naming the key (never
quoting the value, which may be a patient's name).

Each row of a :class:`QueryResult` is a DICOM JSON object (PS3.18 F.2): tag -> ``{"vr": ...,
"Value": [...]}``, with every required return key of its level (PS3.18 Table 10.6.3-3..5,
PS3.4 C.6), present with its VR even when empty, plus the requested and matched attributes.
Attributes the catalog does not index come from the stored DICOM JSON of a representative
instance (the first stored one of the entity). Retrieve locations (RetrieveURL, Retrieve AE
Title) are the door's to add; a C-FIND door keeps only the keys its identifier asked for.

Rows come in a stable order: patients and studies in the order they were first stored,
series by Series Number within their study, instances by Instance Number within their series.

A study whose instances arrived under several Patient IDs belongs to each of those patients:
patient-level matching keys (PatientID, PatientName, ...) at STUDY, SERIES or IMAGE level
match any of them, and the answer carries the first patient that matched (without such keys,
the one the study was first stored under). At PATIENT level each patient counts the study.

A query with ``projects`` (a scoped caller's) sees only studies of those projects: at PATIENT
level a patient exists through such a study, and the Number of Patient Related Studies,
Series and Instances count only those (never another project's).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from typing import Any, Final

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, exists, func, literal, or_, select
from sqlalchemy.sql.util import ClauseAdapter

from catalog.attributes import normalize_date, normalize_time
from catalog.db import Database
from catalog.models import Instance, Patient, Series, Study, StudyPatient
from catalog.normalize import fold, name_words, phonetic
from catalog.projects import in_projects

DicomJson = dict[str, Any]
"""One DICOM JSON object: ``{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, ...}``."""


class QueryLevel(enum.IntEnum):
    """Query/Retrieve level, ordered from the top of the hierarchy down."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class MatchType(enum.Enum):
    """How a matching key is compared (named as the conformance statement lists them)."""

    UID_LIST = "single value, UID list"
    TEXT = "single value, wildcard (case-sensitive)"
    TEXT_CI = "single value, wildcard (case- and accent-insensitive)"
    CODE = "single value, wildcard, value list (comma or backslash)"
    PERSON_NAME = "single value, wildcard (case- and accent-insensitive), fuzzy"
    DATE = "single value, range (dates)"
    TIME = "single value, range (times)"
    NUMBER = "single value"
    MODALITIES = "value list: any series of the study has one of the modalities"
    RETURN_ONLY = "none (returned only)"


class QueryError(ValueError):
    """A query key or value cannot be used; ``key`` names it (the value is never quoted)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Attribute:
    """An attribute the catalog holds in a column (or computes), and how it matches."""

    keyword: str
    level: QueryLevel
    match: MatchType
    column: Any
    folded: Any = None
    fuzzy: Any = None
    scoped: Callable[[frozenset[str]], Any] | None = None
    """The column as a caller scoped to projects sees it, when that differs (a count over
    the patient's studies counts only those of the caller's projects)."""

    def column_for(self, projects: frozenset[str] | None) -> Any:
        if projects is None or self.scoped is None:
            return self.column
        return self.scoped(projects)

    @cached_property
    def tag(self) -> int:
        return int(tag_for_keyword(self.keyword) or 0)

    @cached_property
    def vr(self) -> str:
        # Cached: run_query asks for it once per attribute and row.
        return str(dictionary_VR(self.tag))


def _patient_related(value: Any, projects: frozenset[str] | None = None) -> Any:
    """``value`` (a count or sum) over the studies of the patient of the row: only those of
    ``projects`` when given, so a scoped caller never learns of another project's studies,
    not even as a number."""
    statement = (
        select(value)
        .select_from(StudyPatient)
        .join(Study, Study.id == StudyPatient.study_pk)
        .where(StudyPatient.patient_pk == Patient.id)
    )
    if projects is not None:
        statement = statement.where(in_projects(Study.id, projects))
    return statement.correlate(Patient).scalar_subquery()


_P, _ST, _SE, _IM = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE
_M = MatchType

ATTRIBUTES: Final[tuple[Attribute, ...]] = (
    # patient
    Attribute(
        "PatientName",
        _P,
        _M.PERSON_NAME,
        Patient.patient_name,
        Patient.patient_name_ci,
        Patient.patient_name_fuzzy,
    ),
    Attribute("PatientID", _P, _M.TEXT, Patient.patient_id),
    Attribute("IssuerOfPatientID", _P, _M.TEXT, Patient.issuer_of_patient_id),
    Attribute("PatientBirthDate", _P, _M.DATE, Patient.patient_birth_date),
    Attribute("PatientSex", _P, _M.CODE, Patient.patient_sex),
    Attribute(
        "NumberOfPatientRelatedStudies",
        _P,
        _M.RETURN_ONLY,
        _patient_related(func.count(StudyPatient.study_pk)),
        scoped=partial(_patient_related, func.count(StudyPatient.study_pk)),
    ),
    Attribute(
        "NumberOfPatientRelatedSeries",
        _P,
        _M.RETURN_ONLY,
        _patient_related(func.coalesce(func.sum(Study.number_of_series), 0)),
        scoped=partial(_patient_related, func.coalesce(func.sum(Study.number_of_series), 0)),
    ),
    Attribute(
        "NumberOfPatientRelatedInstances",
        _P,
        _M.RETURN_ONLY,
        _patient_related(func.coalesce(func.sum(Study.number_of_instances), 0)),
        scoped=partial(_patient_related, func.coalesce(func.sum(Study.number_of_instances), 0)),
    ),
    # study
    Attribute("StudyInstanceUID", _ST, _M.UID_LIST, Study.study_instance_uid),
    Attribute("StudyDate", _ST, _M.DATE, Study.study_date),
    Attribute("StudyTime", _ST, _M.TIME, Study.study_time),
    Attribute("AccessionNumber", _ST, _M.TEXT, Study.accession_number),
    Attribute("StudyID", _ST, _M.TEXT, Study.study_id),
    Attribute(
        "StudyDescription", _ST, _M.TEXT_CI, Study.study_description, Study.study_description_ci
    ),
    Attribute(
        "ReferringPhysicianName",
        _ST,
        _M.PERSON_NAME,
        Study.referring_physician_name,
        Study.referring_physician_name_ci,
        Study.referring_physician_name_fuzzy,
    ),
    Attribute("ModalitiesInStudy", _ST, _M.MODALITIES, Study.modalities_in_study),
    Attribute("PatientAge", _ST, _M.TEXT, Study.patient_age),
    Attribute("PatientSize", _ST, _M.RETURN_ONLY, Study.patient_size),
    Attribute("PatientWeight", _ST, _M.RETURN_ONLY, Study.patient_weight),
    Attribute("TimezoneOffsetFromUTC", _ST, _M.RETURN_ONLY, Study.timezone_offset_from_utc),
    Attribute("InstanceAvailability", _ST, _M.RETURN_ONLY, literal("ONLINE")),
    Attribute("NumberOfStudyRelatedSeries", _ST, _M.RETURN_ONLY, Study.number_of_series),
    Attribute("NumberOfStudyRelatedInstances", _ST, _M.RETURN_ONLY, Study.number_of_instances),
    # series
    Attribute("SeriesInstanceUID", _SE, _M.UID_LIST, Series.series_instance_uid),
    Attribute("Modality", _SE, _M.CODE, Series.modality),
    Attribute("SeriesNumber", _SE, _M.NUMBER, Series.series_number),
    Attribute(
        "SeriesDescription",
        _SE,
        _M.TEXT_CI,
        Series.series_description,
        Series.series_description_ci,
    ),
    Attribute("SeriesDate", _SE, _M.DATE, Series.series_date),
    Attribute("SeriesTime", _SE, _M.TIME, Series.series_time),
    Attribute("BodyPartExamined", _SE, _M.CODE, Series.body_part_examined),
    Attribute("ProtocolName", _SE, _M.TEXT, Series.protocol_name),
    Attribute(
        "PerformedProcedureStepStartDate", _SE, _M.DATE, Series.performed_procedure_step_start_date
    ),
    Attribute(
        "PerformedProcedureStepStartTime", _SE, _M.TIME, Series.performed_procedure_step_start_time
    ),
    Attribute("Manufacturer", _SE, _M.TEXT, Series.manufacturer),
    Attribute("ManufacturerModelName", _SE, _M.TEXT, Series.manufacturer_model_name),
    Attribute("StationName", _SE, _M.TEXT, Series.station_name),
    Attribute("InstitutionName", _SE, _M.TEXT, Series.institution_name),
    Attribute("SequenceName", _SE, _M.TEXT, Series.sequence_name),
    Attribute("SliceThickness", _SE, _M.RETURN_ONLY, Series.slice_thickness),
    Attribute("NumberOfSeriesRelatedInstances", _SE, _M.RETURN_ONLY, Series.number_of_instances),
    Attribute("RequestAttributesSequence", _SE, _M.RETURN_ONLY, None),  # from the stored JSON
    # instance
    Attribute("SOPInstanceUID", _IM, _M.UID_LIST, Instance.sop_instance_uid),
    Attribute("SOPClassUID", _IM, _M.UID_LIST, Instance.sop_class_uid),
    Attribute("InstanceNumber", _IM, _M.NUMBER, Instance.instance_number),
    Attribute("ContentDate", _IM, _M.DATE, Instance.content_date),
    Attribute("ContentTime", _IM, _M.TIME, Instance.content_time),
    Attribute("Rows", _IM, _M.NUMBER, Instance.rows),
    Attribute("Columns", _IM, _M.NUMBER, Instance.columns),
    Attribute("BitsAllocated", _IM, _M.NUMBER, Instance.bits_allocated),
    Attribute("NumberOfFrames", _IM, _M.NUMBER, Instance.number_of_frames),
    Attribute("AvailableTransferSyntaxUID", _IM, _M.UID_LIST, Instance.transfer_syntax_uid),
)
_BY_TAG: Final = {attribute.tag: attribute for attribute in ATTRIBUTES}

REQUIRED_KEYS: Final[Mapping[QueryLevel, tuple[str, ...]]] = {
    QueryLevel.PATIENT: (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    QueryLevel.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    QueryLevel.SERIES: (
        "StudyInstanceUID",
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDate",
        "SeriesTime",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "InstanceAvailability",
    ),
    QueryLevel.IMAGE: (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "AvailableTransferSyntaxUID",
    ),
}
"""Keys every answer carries at each level (PS3.18 Table 10.6.3-3..5, PS3.4 C.6)."""

MAX_VALUE_LENGTH: Final = 1024
"""Longest matching value (DICOM's longest matchable VRs hold 64 characters per value)."""
MAX_LIST_VALUES: Final = 1000
"""Most values of one list key (UIDs, codes): each is one SQL parameter."""

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INTEGER_RANGE: Final = {
    "IS": (-(2**31), 2**31 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "US": (0, 2**16 - 1),
}
"""The values an integer VR can hold (PS3.5 6.2): a query beyond them is a mistake."""
_LIST_SPLIT = re.compile(r"[,\\]")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Za-z0-9]{1,64}")
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "AS"})
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_EMPTY_VALUE = '""'
_LIST_MATCHES = frozenset({MatchType.UID_LIST, MatchType.CODE, MatchType.MODALITIES})


@dataclass(frozen=True)
class Condition:
    """One matching key: its attribute and the parsed value."""

    attribute: Attribute
    kind: str  # "values", "pattern", "range", "empty", "fuzzy"
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class Query:
    """A parsed query: build it with :func:`parse_query`."""

    level: QueryLevel
    conditions: tuple[Condition, ...]
    return_attributes: tuple[Attribute, ...]
    json_tags: tuple[int, ...]
    """Tags returned from the representative instance's stored JSON."""
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    unsupported: tuple[str, ...] = ()
    """Keys that are valid attributes but not matched on (ignored, returned if stored)."""
    projects: frozenset[str] | None = None
    """Only studies of these projects exist for the query (``None``: every study); the door
    sets it from its caller (``access.Principal.projects``)."""
    where: tuple[ColumnElement[bool], ...] = ()
    """Further SQL conditions on the level's tables (the dashboard's filters by label, age or
    source, which are not DICOM attributes); set with :func:`dataclasses.replace`."""


@dataclass(frozen=True)
class QueryResult:
    rows: list[DicomJson] = field(default_factory=list)
    more_available: bool = False
    """True when more rows match than ``limit`` allowed (QIDO's ``Warning: 299``)."""


# ------------------------------------------------------------------------------- parsing


def resolve_key(key: str) -> int:
    """The tag of an attribute given by keyword (``PatientID``) or tag (``00100020``)."""
    if _TAG.fullmatch(key):
        return int(key, 16)
    tag = tag_for_keyword(key) if _KEYWORD.fullmatch(key) else None
    if tag is None:
        shown = key if _KEYWORD.fullmatch(key) else "a key"  # never echo control characters
        raise QueryError(shown, "not a DICOM attribute keyword or tag (e.g. PatientID, 00100020)")
    return int(tag)


def parse_query(
    level: QueryLevel,
    keys: Mapping[str, str | Sequence[str]],
    *,
    include: Iterable[str] = (),
    include_all: bool = False,
    parents: Iterable[QueryLevel] = (),
    fuzzy: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> Query:
    """Parse matching keys into a :class:`Query`.

    Parameters
    ----------
    level
        The level of the entities returned.
    keys
        Attribute keyword or tag -> value (several values of one key are given as a list).
    include
        Further attributes to return (keywords or tags; QIDO's ``includefield``).
    include_all
        Return every attribute the catalog holds at this level and above (and, at IMAGE
        level, every attribute of the instance's stored JSON).
    parents
        Higher levels whose required keys are returned too (QIDO ``/series`` without a study
        in the path returns the study's).
    fuzzy
        Fuzzy matching of person names.
    limit, offset
        Paging; ``limit=None`` returns every match.

    Raises
    ------
    QueryError
        A key is not an attribute, or a value does not fit the attribute's matching rules.
    """
    if limit is not None and limit < 1:
        raise QueryError("limit", "must be a positive integer")
    if offset < 0:
        raise QueryError("offset", "must be zero or a positive integer")
    conditions: list[Condition] = []
    unsupported: list[str] = []
    returned: dict[int, Attribute] = {}
    json_tags: list[int] = []

    def want(tag: int) -> None:
        attribute = _BY_TAG.get(tag)
        if attribute is not None and attribute.level <= level and attribute.column is not None:
            returned.setdefault(tag, attribute)
        elif tag not in json_tags:
            json_tags.append(tag)  # not indexed, or of a lower level: from the stored JSON

    for required_level in (level, *parents):
        for keyword in REQUIRED_KEYS[required_level]:
            want(int(tag_for_keyword(keyword) or 0))
    if include_all:
        for known in ATTRIBUTES:
            if known.level <= level:
                want(known.tag)

    for key, raw in keys.items():
        values = [raw] if isinstance(raw, str) else list(raw)
        if "." in key:
            unsupported.append(key)  # sequence matching (e.g. 00400275.00400009)
            continue
        tag = resolve_key(key)
        attribute = _BY_TAG.get(tag)
        if attribute is None or attribute.level > level or attribute.match is MatchType.RETURN_ONLY:
            unsupported.append(key)
            want(tag)
            continue
        want(tag)
        condition = _parse_condition(key, attribute, values, fuzzy)
        if condition is not None:
            conditions.append(condition)

    for key in include:
        try:
            want(resolve_key(key))
        except QueryError as exc:
            raise QueryError("includefield", str(exc)) from None
    return Query(
        level=level,
        conditions=tuple(conditions),
        return_attributes=tuple(returned[tag] for tag in sorted(returned)),
        json_tags=tuple(sorted(json_tags)),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        unsupported=tuple(unsupported),
    )


def _parse_condition(
    key: str, attribute: Attribute, values: list[str], fuzzy: bool
) -> Condition | None:
    values = [value.strip() for value in values]
    for value in values:
        if "\x00" in value:
            raise QueryError(key, "contains a NUL character")
        if len(value) > MAX_VALUE_LENGTH and attribute.match not in _LIST_MATCHES:
            raise QueryError(key, f"is longer than {MAX_VALUE_LENGTH} characters")
    if len(values) > 1 and attribute.match not in (
        MatchType.UID_LIST,
        MatchType.CODE,
        MatchType.MODALITIES,
    ):
        raise QueryError(key, "given more than once; this attribute takes a single value")
    if values == [_EMPTY_VALUE]:
        return Condition(attribute, "empty")
    if all(value == "" or set(value) == {"*"} for value in values):
        return None  # universal matching
    value = values[0]
    has_wildcard = "*" in value or "?" in value
    if has_wildcard and attribute.vr not in _WILDCARD_VRS:
        raise QueryError(key, f"wildcards are not allowed in a {attribute.vr} value")
    match attribute.match:
        case MatchType.UID_LIST:
            uids = _list_values(key, values)
            for uid in uids:
                if len(uid) > 64 or not _UID.fullmatch(uid):
                    raise QueryError(key, "not a UID or a list of UIDs separated by commas")
            return Condition(attribute, "values", uids)
        case MatchType.CODE | MatchType.MODALITIES:
            codes = _list_values(key, values)
            if any(len(code) > 64 for code in codes):
                raise QueryError(key, "has a value longer than 64 characters")
            if any("*" in c or "?" in c for c in codes):
                if len(codes) > 1:
                    raise QueryError(key, "wildcards cannot be combined with a list of values")
                return Condition(attribute, "pattern", codes)
            return Condition(attribute, "values", codes)
        case MatchType.DATE | MatchType.TIME:
            return _parse_range(key, attribute, value)
        case MatchType.NUMBER:
            return Condition(attribute, "values", (str(_integer(key, attribute.vr, value)),))
        case MatchType.PERSON_NAME:
            folded = fold(value) or ""
            if fuzzy:
                return Condition(attribute, "fuzzy", (folded,))
            return Condition(attribute, "pattern" if has_wildcard else "values", (folded,))
        case MatchType.TEXT_CI:
            folded = fold(value) or ""
            return Condition(attribute, "pattern" if has_wildcard else "values", (folded,))
        case _:
            return Condition(attribute, "pattern" if has_wildcard else "values", (value,))


def _list_values(key: str, values: list[str]) -> tuple[str, ...]:
    """The values of a list key (``a,b`` or ``a\\b``, or the key repeated)."""
    items = tuple(item.strip() for v in values for item in _LIST_SPLIT.split(v) if item.strip())
    if len(items) > MAX_LIST_VALUES:
        raise QueryError(key, f"has more than {MAX_LIST_VALUES} values")
    return items


def _integer(key: str, vr: str, value: str) -> int:
    """An integer in ASCII digits (``int()`` also takes ``١``, ``²``-like digits and ``_``)
    that the attribute's VR can hold."""
    low, high = _INTEGER_RANGE.get(vr, _INTEGER_RANGE["IS"])
    expected = f"not an integer from {low} to {high}"
    if not _INTEGER.fullmatch(value) or len(value.lstrip("+-0")) > len(str(high)):
        raise QueryError(key, expected)
    number = int(value)
    if not low <= number <= high:
        raise QueryError(key, expected)
    return number


def _parse_range(key: str, attribute: Attribute, value: str) -> Condition:
    is_date = attribute.match is MatchType.DATE
    expected = "a date YYYYMMDD" if is_date else "a time HHMMSS"
    if not value.isascii():  # \d in the date and time patterns also takes other digits
        raise QueryError(key, f"not {expected} or a range of them (a-b, a-, -b)")
    if value.count("-") > 1:
        raise QueryError(key, f"not {expected} or a range of them (a-b, a-, -b)")
    low_text, dash, high_text = value.partition("-")
    if not dash:
        single = _date(value) if is_date else _time(value)
        if single is None:
            raise QueryError(key, f"not {expected} or a range of them (a-b, a-, -b)")
        if is_date:
            return Condition(attribute, "values", (single,))
        low_text = high_text = value  # a time is a range over its unstated precision
    low = high = None
    if low_text:
        low = _date(low_text) if is_date else _time(low_text)
        if low is None:
            raise QueryError(key, f"range start is not {expected}")
    if high_text:
        high = _date(high_text) if is_date else _time_upper_bound(high_text)
        if high is None:
            raise QueryError(key, f"range end is not {expected}")
    if low is None and high is None:
        raise QueryError(key, "a range needs a start or an end")
    if low is not None and high is not None and low > high:
        raise QueryError(key, "range start is after its end")
    return Condition(attribute, "range", low=low, high=high)


def _date(value: str) -> str | None:
    """``YYYYMMDD`` of a real calendar date (also ``YYYY.MM.DD``), else ``None``."""
    normalized = normalize_date(value)
    if normalized is None:
        return None
    try:
        datetime.strptime(normalized, "%Y%m%d")
    except ValueError:
        return None
    return normalized


def _time(value: str) -> str | None:
    """``HHMMSS[.ffffff]`` of a valid time of day (also ``HH:MM:SS``), else ``None``."""
    normalized = normalize_time(value)
    if normalized is None:
        return None
    hours, minutes, seconds = (int(normalized[i : i + 2]) for i in (0, 2, 4))
    return normalized if hours < 24 and minutes < 60 and seconds <= 60 else None


def _time_upper_bound(value: str) -> str | None:
    """The last instant a partial time covers: ``"12"`` -> ``"125959.999999"``."""
    normalized = _time(value)
    if normalized is None:
        return None
    digits = re.sub(r"[^0-9]", "", value.split(".")[0])
    whole = normalized[:6]
    kept = len(digits)
    whole = whole[:kept] + "595959"[kept:]
    fraction = normalized[6:] if "." in value else ""
    return whole + (fraction.ljust(7, "9") if fraction else ".999999")


# ------------------------------------------------------------------------------ matching


def _pattern(column: Any, value: str, sqlite: bool) -> ColumnElement[bool]:
    """Case-sensitive wildcard match of ``*`` and ``?`` (GLOB on SQLite, LIKE elsewhere)."""
    if sqlite:
        result: ColumnElement[bool] = column.op("GLOB")(value.replace("[", "[[]"))
        return result
    like = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(like.replace("*", "%").replace("?", "_"), escape="\\")  # type: ignore[no-any-return]


def _condition_sql(condition: Condition, sqlite: bool) -> ColumnElement[bool]:
    attribute = condition.attribute
    column = attribute.folded if attribute.folded is not None else attribute.column
    match condition.kind:
        case "empty":
            return or_(attribute.column.is_(None), attribute.column == "")
        case "range":
            parts = []
            if condition.low is not None:
                parts.append(column >= condition.low)
            if condition.high is not None:
                parts.append(column <= condition.high)
            return and_(*parts)
        case "fuzzy":
            (folded,) = condition.values
            if "*" in folded or "?" in folded:
                literal_match = _pattern(column, folded, sqlite)
            else:
                literal_match = column == folded
            words = name_words(folded)
            if not words:
                return literal_match
            word_matches = []
            for word in words:
                options = [attribute.fuzzy.contains(f" {word}", autoescape=True)]
                code = phonetic(word)
                if code:
                    options.append(attribute.fuzzy.contains(f" {code} ", autoescape=True))
                word_matches.append(or_(*options))
            return or_(literal_match, and_(*word_matches))
        case "pattern":
            if attribute.match is MatchType.MODALITIES:
                return _has_series_modality(_pattern(Series.modality, condition.values[0], sqlite))
            return _pattern(column, condition.values[0], sqlite)
        case _:
            if attribute.match is MatchType.MODALITIES:
                return _has_series_modality(Series.modality.in_(condition.values))
            if attribute.match is MatchType.NUMBER:
                return column == int(condition.values[0])  # type: ignore[no-any-return]
            if len(condition.values) == 1:
                return column == condition.values[0]  # type: ignore[no-any-return]
            return column.in_(condition.values)  # type: ignore[no-any-return]


def _has_series_modality(modality_matches: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Series.study_pk == Study.id, modality_matches)


# ----------------------------------------------------------------------------- execution


def _base_select(
    level: QueryLevel, columns: list[Any], patient_matches: list[ColumnElement[bool]]
) -> Select[Any]:
    """The level's entity (its primary key first) joined to its parents, in stable order."""
    if level is QueryLevel.PATIENT:
        return select(Patient.id, *columns).order_by(Patient.id)
    if level is QueryLevel.STUDY:
        statement = select(Study.id, *columns).select_from(Study)
        order: tuple[Any, ...] = (Study.id,)
    elif level is QueryLevel.SERIES:
        statement = (
            select(Series.id, *columns).select_from(Series).join(Study, Series.study_pk == Study.id)
        )
        order = (Series.study_pk, Series.series_number.asc().nulls_last(), Series.id)
    else:
        statement = (
            select(Instance.id, *columns)
            .select_from(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
        )
        order = (Instance.series_pk, Instance.instance_number.asc().nulls_last(), Instance.id)
    return _join_patient(statement, patient_matches).order_by(*order)


def _join_patient(statement: Select[Any], matches: list[ColumnElement[bool]]) -> Select[Any]:
    """Join each study to the patient whose attributes the answer carries.

    A study belongs to every patient its instances arrived under (``study_patient``).
    Without patient-level matching keys that is the one it was first stored under; with
    them, the first of its patients that matches (one row per study, not one per patient).
    """
    if not matches:
        return statement.join(Patient, Study.patient_pk == Patient.id)
    earlier = Patient.__table__.alias("earlier_patient")
    earlier_link = StudyPatient.__table__.alias("earlier_link")
    on_earlier = ClauseAdapter(earlier)
    earlier_match = exists().where(
        earlier_link.c.study_pk == Study.id,
        earlier_link.c.patient_pk < Patient.id,
        earlier.c.id == earlier_link.c.patient_pk,
        *(on_earlier.traverse(match) for match in matches),
    )
    return (
        statement.join(StudyPatient, StudyPatient.study_pk == Study.id)
        .join(Patient, StudyPatient.patient_pk == Patient.id)
        .where(~earlier_match)
    )


def _in_projects(level: QueryLevel, projects: frozenset[str]) -> ColumnElement[bool]:
    if level is QueryLevel.PATIENT:  # a patient exists through a study of the projects
        return exists().where(
            StudyPatient.patient_pk == Patient.id,
            in_projects(StudyPatient.study_pk, projects),
        )
    return in_projects(Study.id, projects)


def _matching(db: Database, query: Query, columns: list[Any]) -> Select[Any]:
    """The rows ``query`` matches (all of them: no paging), with ``columns``."""
    matches = [_condition_sql(c, db.is_sqlite) for c in query.conditions]
    patient_matches = [
        match
        for condition, match in zip(query.conditions, matches, strict=True)
        if condition.attribute.level is QueryLevel.PATIENT
    ]
    statement = _base_select(query.level, columns, patient_matches).where(*matches, *query.where)
    if query.projects is not None:
        statement = statement.where(_in_projects(query.level, query.projects))
    return statement


def count_query(db: Database, query: Query) -> int:
    """How many rows ``query`` matches, whatever its paging (one aggregate query)."""
    matching = _matching(db, query, []).order_by(None).subquery()
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(matching)) or 0)


def run_query(db: Database, query: Query) -> QueryResult:
    """Run ``query`` in one read transaction; rows in the stable order of the level."""
    attributes = query.return_attributes
    columns: list[Any] = [
        a.column_for(query.projects).label(f"a{i}") for i, a in enumerate(attributes)
    ]
    instance_json = query.level is QueryLevel.IMAGE and (query.json_tags or query.include_all)
    if instance_json:
        columns.append(Instance.metadata_json)
    statement = _matching(db, query, columns)
    if query.limit is not None:
        statement = statement.limit(query.limit + 1)
    if query.offset:
        statement = statement.offset(query.offset)
    with db.read() as session:
        connection = session.connection()
        records = connection.execute(statement).all()
        more = query.limit is not None and len(records) > query.limit
        if more:
            records = records[: query.limit]
        stored: dict[int, DicomJson] = {}
        if query.json_tags and not instance_json:
            stored = _representatives(
                connection, query.level, [r[0] for r in records], query.projects
            )
    rows = []
    for record in records:
        row: DicomJson = {}
        if instance_json:
            document = json.loads(record[-1])
            if query.include_all:
                row.update(_without_bulk_data(document))
        else:
            document = stored.get(record[0], {})
        for tag in query.json_tags:
            key = f"{tag:08X}"
            element = document.get(key)
            if element is not None:
                cleaned = _strip_bulk(element)
                if cleaned is not None:
                    row[key] = cleaned
            elif (empty := _empty_element(tag)) is not None:
                row[key] = empty
        for index, attribute in enumerate(attributes):
            row[f"{attribute.tag:08X}"] = _element(attribute.vr, record[index + 1])
        rows.append(dict(sorted(row.items())))
    return QueryResult(rows, more)


def _representatives(
    connection: Any, level: QueryLevel, pks: list[int], projects: frozenset[str] | None
) -> dict[int, DicomJson]:
    """The stored JSON of the first instance of each entity (of a patient: of its studies
    in ``projects``, when given)."""
    if not pks:
        return {}
    first = func.min(Instance.id)
    if level is QueryLevel.SERIES:
        pick = select(Instance.series_pk, first).where(Instance.series_pk.in_(pks))
        pick = pick.group_by(Instance.series_pk)
    elif level is QueryLevel.STUDY:
        pick = (
            select(Series.study_pk, first)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk.in_(pks))
            .group_by(Series.study_pk)
        )
    else:
        pick = (
            select(StudyPatient.patient_pk, first)
            .join(Series, Instance.series_pk == Series.id)
            .join(StudyPatient, Series.study_pk == StudyPatient.study_pk)
            .where(StudyPatient.patient_pk.in_(pks))
            .group_by(StudyPatient.patient_pk)
        )
        if projects is not None:
            pick = pick.where(in_projects(Series.study_pk, projects))
    owner_of = {instance: owner for owner, instance in connection.execute(pick).all()}
    documents = connection.execute(
        select(Instance.id, Instance.metadata_json).where(Instance.id.in_(list(owner_of)))
    ).all()
    return {owner_of[pk]: json.loads(text) for pk, text in documents}


def _element(vr: str, value: Any) -> DicomJson:
    """A DICOM JSON element of ``vr`` from a catalog value (``None``: present, no value)."""
    if value is None or value == "":
        return {"vr": vr}
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return {"vr": vr, "Value": [int(value)]}
    if vr in ("DS", "FL", "FD"):
        return {"vr": vr, "Value": [float(value)]}
    if vr == "PN":
        names = [_person_name(v) for v in str(value).split("\\")]
        if not any(names):
            return {"vr": vr}
        return {"vr": vr, "Value": names}
    if vr in ("LT", "ST", "UT"):
        return {"vr": vr, "Value": [str(value)]}
    return {"vr": vr, "Value": str(value).split("\\")}


def _person_name(value: str) -> dict[str, str]:
    groups = value.split("=")
    result = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group.strip("^ "):
            result[name] = group
    return result


def _empty_element(tag: int) -> DicomJson | None:
    try:
        return {"vr": str(dictionary_VR(tag))}
    except KeyError:
        return None  # a private or unknown tag: nothing to say about it


def _strip_bulk(element: DicomJson) -> DicomJson | None:
    """The element without bulk data (never sent in query answers)."""
    if "BulkDataURI" in element or "InlineBinary" in element or element.get("vr") in _BULK_VRS:
        return None
    if element.get("vr") == "SQ" and "Value" in element:
        return {"vr": "SQ", "Value": [_without_bulk_data(item) for item in element["Value"]]}
    return element


def _without_bulk_data(document: DicomJson) -> DicomJson:
    result = {}
    for key, element in document.items():
        cleaned = _strip_bulk(element)
        if cleaned is not None:
            result[key] = cleaned
    return result


def study_uids(rows: list[DicomJson]) -> set[str]:
    """The Study Instance UIDs among query answers (none at the PATIENT level)."""
    return {
        str(row["0020000D"]["Value"][0]) for row in rows if row.get("0020000D", {}).get("Value")
    }
