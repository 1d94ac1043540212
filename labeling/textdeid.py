"""De-identification of report text, before it is stored or labels are extracted from it.

Two passes: the identifiers the message itself carries (patient name, IDs, accession number,
birth date) wherever they appear, then common patterns (names after 姓名/患者/医师/"Dr.",
MRN / 住院号 / 病历号 numbers, ID-card numbers, phone numbers, e-mail addresses, long
numbers). Dates are shifted by the patient's offset (the one the images' dates got), in the
format they were written in, so intervals between a patient's exams survive.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from deid.clean import Identifier, fold, identifier_pattern, replace_emails

TEXT_DEID_VERSION = "text-deid 1"

NAME = "[NAME]"
ID = "[ID]"
PHONE = "[PHONE]"
EMAIL = "[EMAIL]"
BIRTH_DATE = "[BIRTH DATE]"


@dataclass(frozen=True)
class Identifiers:
    """What the message says about the patient; only used to find these values in the text."""

    patient_ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    """Person names as sent (HL7 ``Family^Given`` or plain); each is also tried by part."""
    accession_numbers: tuple[str, ...] = ()
    birth_date: date | None = None
    other: tuple[str, ...] = field(default=())


_LABELLED_NAME = re.compile(
    r"((?:患者|病人|姓名|申请医师|报告医师|审核医师|检查医师|诊断医师|医师|医生|技师|记录者)\s*+[:：]?\s*+)"
    r"([\u3400-\u9fff·]{2,4})"
    r"|((?i:patient|name|dr\.?|doctor|physician|radiologist|pathologist|reported by|"
    r"signed by|dictated by|read by|verified by)(?:\s*+[:：]\s++|\s++))"
    r"([A-Z][A-Za-z'\-]+(?:,? [A-Z][A-Za-z'\-]+){0,2})",
)
_LABELLED_ID = re.compile(
    r"((?:mrn|medical record(?: number| no\.?)?|patient id|accession(?: number| no\.?)?|"
    r"acc\.?(?: no\.?)?|"
    r"病历号|住院号|门诊号|病案号|登记号|检查号|影像号|ID号|身份证号?|医保号|卡号)\s*+[:：#]?\s*+)"
    r"([A-Za-z0-9][A-Za-z0-9\-]{2,})",
    re.IGNORECASE,
)
_ID_CARD = re.compile(r"(?<![0-9A-Za-z])(?:\d{17}[\dXx]|\d{15})(?![0-9A-Za-z])")
_PHONE = re.compile(
    r"(?<!\d)(?<!\d\.)(?:\+?86[\s-]?)?1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}(?!\.?\d)"
    r"|(?<!\d)(?<!\d\.)0\d{2,3}[\s-]\d{7,8}(?!\.?\d)"
    r"|(?<!\d)(?<!\d\.)\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\.?\d)"
    r"|\+\d{1,3}[\s-]\d[\d\s-]{6,}\d"
)
_EMAIL_LOCAL = frozenset(string.ascii_letters + string.digits + "._%+-")
_EMAIL_DOMAIN = re.compile(r"(?<![A-Za-z0-9.-])[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_LONG_NUMBER = re.compile(r"(?<![\w.])[A-Za-z]{0,6}\d{9,}+[A-Za-z0-9]*+(?!\w)(?!\.\w)")

_DATE_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], date], str], ...] = (
    (
        re.compile(r"(?<!\d)(\d{4})年(\d{1,2})月(\d{1,2})日"),
        lambda m: date(int(m[1]), int(m[2]), int(m[3])),
        "{y}年{m}月{d}日",
    ),
    (
        re.compile(r"(?<!\d)(?<!\d\.)(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?!\.?\d)"),
        lambda m: date(int(m[1]), int(m[3]), int(m[4])),
        "{y:04d}{sep}{m:02d}{sep}{d:02d}",
    ),
    (
        re.compile(r"(?<!\d)(?<!\d\.)(\d{1,2})/(\d{1,2})/(\d{4})(?!\.?\d)"),
        lambda m: date(int(m[3]), int(m[1]), int(m[2])),
        "{m:02d}/{d:02d}/{y:04d}",
    ),
    (
        re.compile(r"(?<!\d)(?<!\d\.)((?:19|20)\d{2})(\d{2})(\d{2})(?!\.?\d)"),
        lambda m: date(int(m[1]), int(m[2]), int(m[3])),
        "{y:04d}{m:02d}{d:02d}",
    ),
)


def deidentify_text(text: str, identifiers: Identifiers, offset_days: int) -> str:
    """``text`` with identifiers removed and dates shifted by ``offset_days``."""
    if not text:
        return text
    text = replace_emails(text, EMAIL, local=_EMAIL_LOCAL.__contains__, domain=_EMAIL_DOMAIN)
    text = _remove_values(text, identifiers)
    text = _LABELLED_NAME.sub(_labelled_name, text)
    text = _LABELLED_ID.sub(lambda m: m.group(1) + ID, text)
    text = _ID_CARD.sub(ID, text)
    text = _PHONE.sub(PHONE, text)
    text = _shift_dates(text, offset_days, identifiers.birth_date)
    return _LONG_NUMBER.sub(ID, text)


def _labelled_name(match: re.Match[str]) -> str:
    label = match.group(1) if match.group(1) is not None else match.group(3)
    return label + NAME


def _name_variants(names: Iterable[str]) -> set[str]:
    variants: set[str] = set()
    for name in names:
        parts = [p.strip() for p in re.split(r"[\^]", name) if p.strip()]
        if not parts:
            continue
        variants.add("".join(parts))
        variants.add(" ".join(parts))
        variants.add(" ".join(reversed(parts)))
        variants.add(", ".join(parts))
        variants.update(p for p in parts if (len(p) >= 2 and not p.isascii()) or len(p) >= 3)
    return {v for v in variants if len(v) >= 2}


def _remove_values(text: str, identifiers: Identifiers) -> str:
    """The message's own identifiers replaced wherever they stand (case-insensitive, longest
    first); one that starts or ends with an ASCII letter or digit only as a whole word."""
    markers: dict[str, str] = {}
    found: list[Identifier] = []
    values = [(v, NAME) for v in sorted(_name_variants(identifiers.names))]
    for group in (identifiers.patient_ids, identifiers.accession_numbers, identifiers.other):
        values.extend((v.strip(), ID) for v in group if len(v.strip()) >= 3)
    for value, marker in values:
        markers.setdefault(fold(value), marker)
        found.append(Identifier(value, _alnum(value[0]), _alnum(value[-1])))
    pattern, owners = identifier_pattern(found, "[A-Za-z0-9]")
    if pattern is None:
        return text
    return pattern.sub(lambda m: markers.get(owners.get(fold(m.group()), ""), ID), text)


def _alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _shift_dates(text: str, offset_days: int, birth_date: date | None) -> str:
    offset = timedelta(days=offset_days)
    for pattern, parse, template in _DATE_PATTERNS:

        def shift(
            match: re.Match[str],
            parse: Callable[[re.Match[str]], date] = parse,
            template: str = template,
        ) -> str:
            try:
                day = parse(match)
            except ValueError:
                return match.group()  # not a date after all (e.g. 2024-13-45)
            if birth_date is not None and day == birth_date:
                return BIRTH_DATE
            moved = day + offset
            separator = match.group(2) if "{sep}" in template else ""
            return template.format(y=moved.year, m=moved.month, d=moved.day, sep=separator)

        text = pattern.sub(shift, text)
    return text
