"""The PS3.15 Annex E profile as a tag -> action lookup, built once from the table data.

The tables in ``deid/data/`` (Table E.1-1 of DICOM 2024b with every option column, and the
Basic Profile column of 2026c) are the only source of which attribute gets which action;
this module resolves the combined codes and the options chosen in config into one
:class:`Action` per tag, so the hot path is a dictionary lookup.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PROFILE_VERSION: Final = "pacsnode-deid-1"
"""Version of the profile as this code applies it; recorded with every instance."""

TABLE_EDITIONS: Final = "PS3.15 E.1-1 2024b+2026c"

_MAIN_TABLE: Final = "confidentiality_profile_attributes.json"
_NEWER_TABLE: Final = "basic_profile_2026c_dicom-anonymizer.json"
_PRIVATE_ROW: Final = "ggggeeee-where-gggg-is-odd"


class ProfileError(ValueError):
    """The profile tables are missing or do not say what this code expects."""


class Action(enum.Enum):
    """What happens to one attribute (PS3.15 E.3.1), after combined codes are resolved."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"
    KEEP_SEQUENCE = "U*"
    """X/Z/U*: the sequence stays and its items are de-identified (their UIDs replaced)."""


# How a combined code is resolved without IOD type information: the choice that is valid
# whatever the attribute's type in the IOD at hand, and never keeps the original value.
COMBINED: Final[Mapping[str, Action]] = {
    "X": Action.REMOVE,
    "Z": Action.EMPTY,
    "D": Action.DUMMY,
    "U": Action.UID,
    "K": Action.KEEP,
    "C": Action.CLEAN,
    "Z/D": Action.DUMMY,  # type 1 needs D, type 2 accepts D
    "X/Z": Action.EMPTY,  # type 2 needs Z, type 3 accepts Z
    "X/D": Action.DUMMY,  # type 1 needs D, type 3 accepts D
    "X/Z/D": Action.DUMMY,  # D is valid for types 1, 2 and 3
    "X/Z/U*": Action.KEEP_SEQUENCE,  # references stay valid, with replaced UIDs
}


class Option(enum.Enum):
    """Profile options (PS3.15 Table E.1-1 columns) with their CID 7050 codes."""

    RETAIN_SAFE_PRIVATE = ("rtnSafePrivOpt", codes.DCM.RetainSafePrivateOption)
    RETAIN_UIDS = ("rtnUIDsOpt", codes.DCM.RetainUidsOption)
    RETAIN_DEVICE_IDENTITY = ("rtnDevIdOpt", codes.DCM.RetainDeviceIdentityOption)
    RETAIN_INSTITUTION_IDENTITY = ("rtnInstIdOpt", codes.DCM.RetainInstitutionIdentityOption)
    RETAIN_PATIENT_CHARACTERISTICS = (
        "rtnPatCharsOpt",
        codes.DCM.RetainPatientCharacteristicsOption,
    )
    RETAIN_FULL_DATES = (
        "rtnLongFullDatesOpt",
        codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    )
    RETAIN_MODIFIED_DATES = (
        "rtnLongModifDatesOpt",
        codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    )
    CLEAN_DESCRIPTORS = ("cleanDescOpt", codes.DCM.CleanDescriptorsOption)

    @property
    def column(self) -> str:
        return str(self.value[0])

    @property
    def code(self) -> Code:
        code: Code = self.value[1]
        return code


BASIC_PROFILE_CODE: Final[Code] = codes.DCM.BasicApplicationConfidentialityProfile


@dataclass(frozen=True)
class Row:
    """One attribute row of Table E.1-1."""

    key: str  # 8 lower-case hex digits, 'x' for masked digits
    name: str
    basic: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """The resolved profile: an action per tag, per masked group, and for private tags."""

    actions: Mapping[int, Action]
    names: Mapping[int, str]
    curve_action: Action
    overlay_actions: Mapping[int, Action]  # element -> action within 60xx groups
    private_action: Action
    options: frozenset[Option]

    @property
    def method_id(self) -> str:
        """Short id of profile and options for the catalog (``pacsnode-deid-1:113107+...``)."""
        applied = sorted(option.code.value for option in self.options)
        return f"{PROFILE_VERSION}:{'+'.join([BASIC_PROFILE_CODE.value, *applied])}"

    @property
    def method_codes(self) -> list[Code]:
        """CID 7050 codes of what was applied: the Basic Profile first, then the options."""
        ordered = [option for option in Option if option in self.options]
        return [BASIC_PROFILE_CODE, *(option.code for option in ordered)]

    def action_for(self, tag: int) -> Action | None:
        """The action for ``tag``; ``None`` when the profile does not list it (kept)."""
        action = self.actions.get(tag)
        if action is not None:
            return action
        group = tag >> 16
        if group & 1:
            return self.private_action
        if group & 0xFF00 == 0x5000 and group <= 0x501E:
            return self.curve_action
        if group & 0xFF00 == 0x6000 and group <= 0x601E:
            return self.overlay_actions.get(tag & 0xFFFF, Action.REMOVE)
        return None


def load_rows() -> list[Row]:
    """Every row of both tables, the 2024b row winning where both list a tag."""
    main = _read_json(_MAIN_TABLE)
    newer = _read_json(_NEWER_TABLE)
    if not isinstance(main, list) or not isinstance(newer, dict):
        raise ProfileError("de-identification tables have an unexpected layout")
    rows: dict[str, Row] = {}
    for entry in main:
        row = _row(entry, with_options=True)
        rows[row.key] = row
    for entry in newer.get("rows", []):
        row = _row(entry, with_options=False)
        rows.setdefault(row.key, row)
    if _PRIVATE_ROW not in rows or "00100010" not in rows:
        raise ProfileError("de-identification tables lack the patient name or private rows")
    return list(rows.values())


def build_profile(options: Iterable[Option], rows: list[Row] | None = None) -> Profile:
    """Resolve every row under ``options`` into one action per tag."""
    chosen = frozenset(options)
    if Option.RETAIN_FULL_DATES in chosen and Option.RETAIN_MODIFIED_DATES in chosen:
        raise ProfileError("full dates and modified dates are exclusive options")
    actions: dict[int, Action] = {}
    names: dict[int, str] = {}
    overlay: dict[int, Action] = {}
    curve = private = Action.REMOVE
    for row in rows if rows is not None else load_rows():
        action = _resolve(row, chosen)
        if row.key == _PRIVATE_ROW:
            private = action
        elif row.key.startswith("50xx"):
            curve = action
        elif row.key.startswith("60xx"):
            overlay[int(row.key[4:], 16)] = action
        elif "x" in row.key:
            raise ProfileError(f"unexpected masked row {row.key} in the profile table")
        else:
            tag = int(row.key, 16)
            actions[tag] = action
            names[tag] = row.name
    return Profile(actions, names, curve, overlay, private, chosen)


def _resolve(row: Row, chosen: frozenset[Option]) -> Action:
    """Options override the Basic Profile; when two chosen options differ, clean wins."""
    overrides = {row.options[o.column] for o in chosen if o.column in row.options}
    if "C" in overrides:
        return Action.CLEAN
    if "K" in overrides:
        return Action.KEEP
    try:
        return COMBINED[row.basic]
    except KeyError:
        raise ProfileError(f"unknown action {row.basic!r} for {row.name}") from None


def _row(entry: Any, *, with_options: bool) -> Row:
    try:
        key = str(entry["id"]).lower()
        options = (
            {o.column: str(entry[o.column]) for o in Option if entry.get(o.column)}
            if with_options
            else {}
        )
        return Row(key, str(entry["name"]), str(entry["basicProfile"]), options)
    except (KeyError, TypeError) as exc:
        raise ProfileError(f"malformed row in the de-identification table: {exc}") from None


def _read_json(name: str) -> Any:
    try:
        text = resources.files("deid").joinpath("data", name).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read de-identification table {name}: {exc}") from None
