"""Apply the profile to one data set in memory: one walk, values touched only where needed.

Attributes the profile does not list keep their encoded bytes (pixel data is never
decoded); listed ones are removed, emptied, replaced by a dummy or a pseudonym, or cleaned.
See ``docs/deid.md`` for every rule and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from pydicom._dicom_dict import DicomDictionary
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from catalog.elements import element_of, tag_of
from deid.base import DeidRejectedError
from deid.clean import TextCleaner, cleaner_for, identifier_tokens
from deid.profile import Action, Profile
from deid.pseudonym import Pseudonymizer, format_date, parse_date

MAX_DEPTH: Final = 64
"""Sequences nested deeper than this are refused rather than half processed."""

PATIENT_ID: Final = 0x00100020
PATIENT_NAME: Final = 0x00100010
ACCESSION_NUMBER: Final = 0x00080050
ISSUER_OF_PATIENT_ID: Final = 0x00100021

_TEXT_VRS: Final = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN"})
_FREE_TEXT_VRS: Final = frozenset({"LO", "ST", "LT", "UT", "UC"})
_IDENTIFIER_VRS: Final = frozenset({"PN", "LO", "SH", "DA"})
_SQ_TAGS: Final = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_UI_TAGS: Final = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "UI")
# UIDs that name a kind of thing (SOP classes, syntaxes, coding schemes), not an instance.
_KIND_UID: Final = re.compile(
    r"Class|TransferSyntax|CodingScheme|Creator|MappingResource|ContextUID|Supported|"
    r"HomeCommunity|RepositoryUnique|RetrieveLocation|SegmentationTemplate"
)
_DUMMY: Final[dict[str, Any]] = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "UR": "urn:anonymized",
    "DS": "0",
    "IS": "0",
    "OB": b"\0\0",
    "OW": b"\0\0",
    "UN": b"\0\0",
}
# Text VRs whose ASCII bytes are their value (no number formatting, no character set).
_ASCII_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_NUMERIC: Final = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})


@dataclass
class Context:
    """What one data set's walk needs and gathers."""

    patient_key: str
    issuer: str
    pseudo_patient_id: str
    identifiers: set[str] = field(default_factory=set)
    pending_clean: list[tuple[Dataset, int]] = field(default_factory=list)
    dates_shifted: bool = False


class ProfileWalker:
    """The profile applied to data sets; built once per node, safe to share across threads."""

    def __init__(
        self,
        profile: Profile,
        pseudonymizer: Pseudonymizer,
        *,
        private_rules: frozenset[tuple[int, int, str]] = frozenset(),
        shift_dates: bool = True,
    ) -> None:
        self.profile = profile
        self.pseudonyms = pseudonymizer
        self.private_rules = private_rules
        self.private_groups = frozenset(group for group, _, _ in private_rules)
        self.shift_dates = shift_dates
        self._uid_cache: dict[str, str] = {}

    # ------------------------------------------------------------------ entry point

    def apply(self, ds: Dataset, context: Context) -> None:
        """De-identify ``ds`` in place; raise :class:`DeidRejectedError` if it cannot be."""
        try:
            self._walk(ds, context, depth=0, structured=False)
        except RecursionError:
            raise DeidRejectedError("sequences nested too deeply to de-identify") from None
        if context.pending_clean:
            cleaner = cleaner_for(frozenset(context.identifiers))
            for item, tag in context.pending_clean:
                self._clean_text(item, tag, cleaner)

    # ------------------------------------------------------------------ the walk

    def _walk(self, ds: Dataset, context: Context, depth: int, structured: bool) -> None:
        if depth > MAX_DEPTH:
            raise DeidRejectedError("sequences nested too deeply to de-identify")
        for base_tag in list(ds.keys()):
            tag = int(base_tag)
            if tag & 0xFFFF == 0:  # group length: stale once anything changes
                del ds[tag]
                continue
            if tag >> 16 & 1:
                self._private(ds, tag, context, depth)
                continue
            action = self.profile.action_for(tag)
            if action is None:
                self._unlisted(ds, tag, context, depth, structured)
            else:
                self._listed(ds, tag, action, context, depth)

    def _listed(self, ds: Dataset, tag: int, action: Action, context: Context, depth: int) -> None:
        vr = _vr(ds, tag)
        if tag == PATIENT_ID:
            self._remember(ds, tag, vr, context)
            issuer = text_of(ds, ISSUER_OF_PATIENT_ID) if depth else context.issuer
            original = text_of(ds, tag)
            pseudo = (
                context.pseudo_patient_id
                if depth == 0
                else self.pseudonyms.patient_id(original, issuer)
            )
            _set(ds, tag, "LO", pseudo if original or depth == 0 else "")
            return
        if tag == PATIENT_NAME and depth == 0:
            self._remember(ds, tag, vr, context)
            _set(ds, tag, "PN", self.pseudonyms.patient_name(context.pseudo_patient_id))
            return
        if tag == ACCESSION_NUMBER:
            self._remember(ds, tag, vr, context)
            original = text_of(ds, tag)
            _set(ds, tag, "SH", self.pseudonyms.accession_number(original) if original else "")
            return
        if vr == "SQ":
            self._listed_sequence(ds, tag, action, context, depth)
            return
        if action is Action.KEEP:
            return
        if action is Action.UID or vr == "UI":
            if action is Action.REMOVE:
                del ds[tag]
            elif action is Action.EMPTY:
                _set(ds, tag, vr, "")
            else:
                self._replace_uids(ds, tag)
            return
        if action is Action.CLEAN:
            self._clean(ds, tag, vr, context)
            return
        self._remember(ds, tag, vr, context)
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.EMPTY:
            _set(ds, tag, vr, None)
        else:  # DUMMY (KEEP_SEQUENCE only applies to sequences)
            _set(ds, tag, vr, _dummy(vr))

    def _listed_sequence(
        self, ds: Dataset, tag: int, action: Action, context: Context, depth: int
    ) -> None:
        if action is Action.REMOVE:
            self._remember_sequence(ds, tag, context)
            del ds[tag]
        elif action is Action.EMPTY:
            self._remember_sequence(ds, tag, context)
            _set(ds, tag, "SQ", Sequence())
        else:
            # KEEP, KEEP_SEQUENCE (X/Z/U*), CLEAN and DUMMY keep the items and de-identify
            # them; free text in CLEAN/DUMMY items (no table row of its own) is cleaned.
            structured = action in (Action.CLEAN, Action.DUMMY)
            self._walk_items(ds, tag, context, depth, structured)

    def _unlisted(
        self, ds: Dataset, tag: int, context: Context, depth: int, structured: bool
    ) -> None:
        raw = element_of(ds, tag)
        raw_vr = raw.VR if raw is not None else None
        if tag in _SQ_TAGS or raw_vr == "SQ":
            self._walk_items(ds, tag, context, depth, structured)
        elif tag in _UI_TAGS or raw_vr == "UI":
            keyword = keyword_for_tag(tag)
            if not (keyword and _KIND_UID.search(keyword)):
                self._replace_uids(ds, tag, keep_well_known=True)
        elif structured and _vr(ds, tag) in _FREE_TEXT_VRS:
            context.pending_clean.append((ds, tag))

    def _walk_items(
        self, ds: Dataset, tag: int, context: Context, depth: int, structured: bool
    ) -> None:
        element = ds[tag]
        if element.VR != "SQ" or not isinstance(element.value, Sequence):
            # A listed sequence that did not decode as one: nothing can be checked inside.
            del ds[tag]
            return
        for item in element.value:
            self._walk(item, context, depth + 1, structured)

    def _private(self, ds: Dataset, tag: int, context: Context, depth: int) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        if group in self.private_groups:
            if 0x0010 <= element <= 0x00FF:
                creator = text_of(ds, tag)
                if any(g == group and c == creator for g, _, c in self.private_rules):
                    return
            elif element >= 0x1000:
                creator_tag = (group << 16) | (element >> 8)
                creator = text_of(ds, creator_tag) if creator_tag in ds else ""
                if (group, element & 0xFF, creator) in self.private_rules:
                    if _vr(ds, tag) == "SQ":
                        self._walk_items(ds, tag, context, depth, structured=True)
                    return
        if element >= 0x1000:  # private values often repeat names and IDs: strip them too
            self._remember(ds, tag, _vr(ds, tag), context)
        del ds[tag]

    # ------------------------------------------------------------------ values

    def _replace_uids(self, ds: Dataset, tag: int, keep_well_known: bool = False) -> None:
        values = text_of(ds, tag)
        if not values:
            return
        replaced = []
        for value in values.split("\\"):
            text = value.strip("\0 ")
            if keep_well_known and (text in UID_dictionary or text.startswith("1.2.840.10008.")):
                replaced.append(text)
            else:
                replaced.append(self._uid(text))
        _set(ds, tag, "UI", replaced if len(replaced) > 1 else replaced[0])

    def _uid(self, original: str) -> str:
        cached = self._uid_cache.get(original)
        if cached is None:
            cached = self.pseudonyms.uid(original)
            if len(self._uid_cache) > 100_000:
                self._uid_cache.clear()
            self._uid_cache[original] = cached
        return cached

    def _clean(self, ds: Dataset, tag: int, vr: str, context: Context) -> None:
        if vr == "DA":
            if self.shift_dates:
                self._shift(ds, tag, context, self._shift_da)
        elif vr == "DT":
            if self.shift_dates:
                self._shift(ds, tag, context, self._shift_dt)
        elif vr in ("TM", "AS"):
            return  # whole-day shifts leave times of day and ages as they are
        elif vr == "AE":
            original = text_of(ds, tag)
            _set(ds, tag, vr, "AE" + self.pseudonyms.token("ae", original, 14) if original else "")
        elif vr in _TEXT_VRS:
            context.pending_clean.append((ds, tag))
        else:
            _set(ds, tag, vr, _dummy(vr))

    def _shift(
        self, ds: Dataset, tag: int, context: Context, shift: Callable[[str, Context], str]
    ) -> None:
        values, vr = text_of(ds, tag), _vr(ds, tag)
        if not values:
            return
        try:
            shifted = [shift(value, context) for value in values.split("\\")]
        except ValueError:
            _set(ds, tag, vr, None)  # not a date: when in doubt, remove
            return
        context.dates_shifted = True
        _set(ds, tag, vr, shifted if len(shifted) > 1 else shifted[0])

    def _shift_da(self, value: str, context: Context) -> str:
        return self.pseudonyms.shift_date(value, context.patient_key, context.issuer)

    def _shift_dt(self, value: str, context: Context) -> str:
        value = value.strip()
        if len(value) < 8:
            raise ValueError("datetime without a full date")
        return self._shift_da(value[:8], context) + value[8:]

    def _clean_text(self, ds: Dataset, tag: int, cleaner: TextCleaner) -> None:
        values, vr = text_of(ds, tag), _vr(ds, tag)
        if not values:
            return
        if vr == "PN":
            _set(ds, tag, vr, "")  # a person name cleaned of names is no name
            return
        split = vr not in ("LT", "ST", "UT")  # these hold one value, backslashes and all
        items = values.split("\\") if split else [values]
        cleaned = [cleaner.clean(value) for value in items]
        _set(ds, tag, vr, cleaned if len(cleaned) > 1 else cleaned[0])

    def _remember(self, ds: Dataset, tag: int, vr: str, context: Context) -> None:
        """Note an identifying value before it goes, to strip it from cleaned text."""
        if vr not in _IDENTIFIER_VRS:
            return
        value = text_of(ds, tag)
        if value:
            for part in value.split("\\"):
                context.identifiers.update(identifier_tokens(part, person_name=vr == "PN"))

    def _remember_sequence(self, ds: Dataset, tag: int, context: Context) -> None:
        element = ds[tag]
        if not isinstance(element.value, Sequence):
            return
        for item in element.value:
            for inner in list(item.keys()):
                inner_vr = _vr(item, int(inner))
                if inner_vr == "SQ":
                    self._remember_sequence(item, int(inner), context)
                else:
                    self._remember(item, int(inner), inner_vr, context)


# ---------------------------------------------------------------------- helpers


def _vr(ds: Dataset, tag: int) -> str:
    """The element's VR; the dictionary's when it was sent implicitly or as UN."""
    raw = element_of(ds, tag)
    vr = str(raw.VR) if isinstance(raw, RawDataElement | DataElement) and raw.VR else "UN"
    if vr == "UN":
        entry = DicomDictionary.get(tag)
        if entry and entry[0] and " " not in entry[0]:  # "US or SS": keep UN
            vr = entry[0]
    return vr


def text_of(ds: Dataset, tag: int | str) -> str:
    """The value as text (multiple values joined by backslash); "" when unusable.

    Plain ASCII text still as received is read from its bytes: converting it would cost
    more than the rest of its de-identification, and its bytes could no longer be copied
    as they came when the instance is written (see ``ingest/encoding.py``).
    """
    tag = tag_of(tag)
    try:
        raw = ds.get_item(tag)
    except Exception:
        return ""
    if isinstance(raw, RawDataElement) and raw.VR in _ASCII_VRS:
        value = raw.value
        if isinstance(value, bytes) and value.isascii() and b"\x1b" not in value:
            return value.decode("ascii").strip("\0 ")
    try:
        converted = ds[tag].value
    except Exception:
        return ""
    if converted is None:
        return ""
    if isinstance(converted, MultiValue | list):
        return "\\".join(str(v) for v in converted)
    if isinstance(converted, bytes):
        return ""
    return str(converted).strip("\0 ")


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    ds[tag] = DataElement(tag, vr, value)


def _dummy(vr: str) -> Any:
    if vr in _NUMERIC:
        return 0
    return _DUMMY.get(vr, None)


def age_string(birth: date, on: date) -> str | None:
    """PS3.5 AS value for the age on ``on`` of someone born on ``birth``; None if negative."""
    days = (on - birth).days
    if days < 0:
        return None
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if years >= 2:
        return f"{min(years, 999):03d}Y"
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months >= 1:
        return f"{months:03d}M"
    return f"{days:03d}D"


def compute_age(ds: Dataset, date_keywords: Iterable[str]) -> str | None:
    """The patient's age at the first usable date of ``date_keywords`` (original dates)."""
    try:
        birth = parse_date(text_of(ds, "PatientBirthDate"))
    except ValueError:
        return None
    for keyword in date_keywords:
        try:
            on = parse_date(text_of(ds, keyword))
        except ValueError:
            continue
        return age_string(birth, on)
    return None


__all__ = [
    "MAX_DEPTH",
    "Context",
    "ProfileWalker",
    "age_string",
    "compute_age",
    "format_date",
    "text_of",
]
