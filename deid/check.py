"""Find what de-identification missed: ``pacsnode deid check``.

Two independent tests per data set, neither of which prints a value it finds:

- the profile: every attribute the profile removes that is present, empties that holds a
  value, replaces by a pseudonym or a new UID that does not look like one, and every
  private attribute outside the allow-list;
- the vault: every original value the vault holds (patient IDs, names, birth dates,
  accession numbers, study and series UIDs) found anywhere in the headers, private
  attributes and file meta included. An original is found as a whole value or as whole
  words of a longer text ("DOE" is not in "DOES", "ANON" not in "ANONYMIZED"); originals
  that stand for no value (``ANONYMIZED``, ``UNKNOWN``, ``Test``, ``^^^^``: see
  :mod:`deid.placeholders`) are not searched, since the node writes some of them itself.

Usable as a gate: an archive the node de-identified has no finding.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from deid.engine import ACCESSION_NUMBER, PATIENT_ID, PATIENT_NAME
from deid.placeholders import is_placeholder
from deid.profile import Action, Option, Profile
from deid.vault import VaultRecord

_PSEUDO_PATIENT: Final = re.compile(r"^P[A-Z2-7]{16}$")
_PSEUDO_ACCESSION: Final = re.compile(r"^A[A-Z2-7]{15}$")
_PIXEL_DATA: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
MIN_ORIGINAL_LENGTH: Final = 4
"""Shorter originals (a 3-letter ID, a sex code) are not searched: they match anything."""


@dataclass(frozen=True)
class Finding:
    """One problem in one data set; ``where`` is a file name or a stored UID."""

    where: str
    tag: str
    keyword: str
    problem: str


class OriginalIndex:
    """Every original value from the vault, as one regular expression."""

    _LABELS: Final = {
        "patient_id": "an original patient ID",
        "patient_name": "an original patient name",
        "patient_birth_date": "an original birth date",
        "accession_number": "an original accession number",
        "study_instance_uid": "an original study UID",
        "series_instance_uid": "an original series UID",
    }

    def __init__(self, records: Iterable[VaultRecord]) -> None:
        labels: dict[str, str] = {}
        for record in records:
            for field, value in record.originals.items():
                label = self._LABELS.get(field)
                if label is None or not value:
                    continue
                if is_placeholder(value):
                    continue
                tokens = name_variants(value) if field == "patient_name" else {value.strip()}
                for token in tokens:
                    if is_placeholder(token):
                        continue
                    if len(token) >= MIN_ORIGINAL_LENGTH or (
                        len(token) >= 2 and not token.isascii()
                    ):
                        labels.setdefault(token.casefold(), label)
        self.count = len(labels)
        self._labels = labels
        parts = []
        for token in sorted(labels, key=len, reverse=True):
            escaped = re.escape(token)
            if _word_edge(token[0]) and _word_edge(token[-1]):
                escaped = rf"(?<![\w.]){escaped}(?!\w|\.\d)"
            parts.append(escaped)
        self._pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def find(self, text: str) -> str | None:
        """What kind of original ``text`` contains, or None."""
        if self._pattern is None:
            return None
        match = self._pattern.search(text)
        return self._labels.get(match.group(0).casefold()) if match else None


def _word_edge(char: str) -> bool:
    """Whether a token ending in ``char`` must end a word to match: letters and digits of
    scripts written with spaces. Ideographs and kana have no word boundaries ("山田" in
    "山田太郎" is the family name), so such a token matches anywhere."""
    return char.isalnum() and unicodedata.east_asian_width(char) not in ("W", "F")


def name_variants(value: str) -> set[str]:
    """How a person name shows up in text: the value, each component group, and family
    and given name together in either order ("DOE^JOHN", "John Doe", "Doe, John", "山田太郎").

    Single components alone are not searched: "Name" or "Test" would match anything.
    """
    variants = {value.strip()}
    for group in value.split("="):
        parts = [p.strip() for p in group.split("^") if p.strip()]
        if not parts:
            continue
        variants.add(group.strip())
        if len(parts) >= 2:
            family, given = parts[0], parts[1]
            variants.update(
                {
                    f"{family}^{given}",
                    f"{family} {given}",
                    f"{given} {family}",
                    f"{family}, {given}",
                }
            )
            if not family.isascii():
                variants.update({family + given, given + family})
    return {v for v in variants if v}


class HeaderChecker:
    """Checks data sets against a profile and the vault's originals."""

    def __init__(
        self,
        profile: Profile,
        originals: OriginalIndex,
        private_rules: frozenset[tuple[int, int, str]] = frozenset(),
    ) -> None:
        self.profile = profile
        self.originals = originals
        self.private_rules = private_rules
        self.uids_replaced = Option.RETAIN_UIDS not in profile.options

    def check(self, ds: Dataset, where: str) -> list[Finding]:
        findings: list[Finding] = []
        if str(ds.get("PatientIdentityRemoved", "") or "").upper() != "YES":
            findings.append(Finding(where, "(0012,0062)", "PatientIdentityRemoved", "not YES"))
        for element, _ in _elements(ds.file_meta, {}):
            self._vault(element, where, findings)
        for element, creator in _elements(ds, {}):
            self._profile(element, creator, where, findings)
            self._vault(element, where, findings)
        return findings

    def _profile(
        self, element: DataElement, creator: str | None, where: str, out: list[Finding]
    ) -> None:
        tag = int(element.tag)
        if tag & 0xFFFF == 0:
            return
        if tag >> 16 & 1:
            if not self._private_allowed(tag, creator):
                out.append(_finding(where, element, "private attribute not on the allow-list"))
            return
        value = _strings(element)
        if tag in (PATIENT_ID, PATIENT_NAME):
            if any(v and not _PSEUDO_PATIENT.match(v) for v in value):
                out.append(_finding(where, element, "not a pseudonym"))
            return
        if tag == ACCESSION_NUMBER:
            if any(v and not _PSEUDO_ACCESSION.match(v) for v in value):
                out.append(_finding(where, element, "not a pseudonym"))
            return
        action = self.profile.action_for(tag)
        if action is Action.REMOVE:
            out.append(_finding(where, element, "present, but the profile removes it"))
        elif action is Action.EMPTY and element.VR != "SQ" and any(value):
            out.append(_finding(where, element, "has a value, but the profile empties it"))
        elif (
            action is Action.UID
            and self.uids_replaced
            and any(v and not v.startswith("2.25.") for v in value)
        ):
            out.append(_finding(where, element, "UID not replaced"))

    def _vault(self, element: DataElement, where: str, out: list[Finding]) -> None:
        if int(element.tag) in _PIXEL_DATA or element.VR == "SQ":
            return
        for text in _strings(element):
            label = self.originals.find(text)
            if label is not None:
                out.append(_finding(where, element, f"contains {label} (vault)"))
                return

    def _private_allowed(self, tag: int, creator: str | None) -> bool:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return any(g == group and c == creator for g, _, c in self.private_rules)
        return (group, element & 0xFF, creator or "") in self.private_rules


def _elements(ds: Dataset, creators: dict[int, str]) -> Iterator[tuple[DataElement, str | None]]:
    """Every element, sequences included, with the private creator of private ones."""
    for element in ds:
        tag = int(element.tag)
        group, number = tag >> 16, tag & 0xFFFF
        creator = None
        if group & 1:
            if 0x0010 <= number <= 0x00FF:
                creator = str(element.value or "").strip()
                creators[tag] = creator
            elif number >= 0x1000:
                creator = creators.get((group << 16) | (number >> 8))
        yield element, creator
        if element.VR == "SQ" and isinstance(element.value, Sequence):
            for item in element.value:
                yield from _elements(item, {})


def _strings(element: DataElement) -> list[str]:
    value = element.value
    if value is None:
        return []
    if isinstance(value, bytes):
        if len(value) > 1 << 16:
            return []
        return [value.decode("utf-8", "ignore").strip("\0 ")]
    if isinstance(value, MultiValue | list):
        return [str(v).strip("\0 ") for v in value if v is not None]
    return [str(value).strip("\0 ")]


def _finding(where: str, element: DataElement, problem: str) -> Finding:
    tag = int(element.tag)
    keyword = keyword_for_tag(tag) or ("private" if tag >> 16 & 1 else "unknown")
    return Finding(where, f"({tag >> 16:04X},{tag & 0xFFFF:04X})", keyword, problem)
