"""HL7 v2 ORU^R01 result messages to :class:`IncomingReport`, and their ACKs (python-hl7).

What is read: PID-3 (patient ID, first repetition), PID-2/PID-4 (other IDs, only to remove
them from the text), PID-5 (names, idem), PID-7 (birth date, idem); OBR-3 (filler order
number: the accession number; OBR-18 when OBR-3 is empty), OBR-7 (observation date: the exam
date), OBR-24 (diagnostic service: SP/PAT/AP/CP make a pathology report, a modality code such
as CT or MR is kept); every OBX of type FT, TX or ST, in order, with escape sequences
resolved: an OBX whose identifier (OBX-3) says impression / conclusion / diagnosis / 印象 /
诊断 / 结论 is the impression, the others are the findings.

Errors map to HL7 acknowledgement codes: ``AR`` (rejected: not HL7, unknown character set,
not ORU^R01) and ``AE`` (error: a required field or the text is missing, storage failed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import hl7

from labeling.intake import IncomingReport

_CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "GB 18030-2000": "gb18030",
    "GB18030": "gb18030",
    "UNICODE": "utf-8",
}
_TEXT_TYPES = {"FT", "TX", "ST"}
_IMPRESSION = re.compile(r"imp|conclu|diagnos|opinion|印象|诊断|结论|提示", re.IGNORECASE)
_PATHOLOGY_SERVICES = {"SP", "PAT", "PATH", "AP", "CP", "CY", "SURG PATH"}
_MODALITIES = {"CT", "MR", "MRI", "US", "MG", "DX", "CR", "PT", "NM", "XA", "RF", "OT", "PET"}


class MessageError(Exception):
    """The message cannot be accepted; ``code`` is the MSA-1 answer (AR or AE)."""

    def __init__(self, code: str, reason: str, error_code: str = "207") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error_code = error_code
        """HL7 table 0357: 100 segment sequence, 101 required field missing, 102 data type,
        200 unsupported message type, 207 application internal error."""


@dataclass(frozen=True)
class Header:
    """What an ACK needs from the message header (read even when parsing fails)."""

    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5"
    encoding: str = "utf-8"


def read_header(block: bytes) -> Header:
    """The MSH fields of a raw message, as far as they can be read."""
    first = re.split(rb"[\r\n]", block, maxsplit=1)[0]
    if not first.startswith(b"MSH") or len(first) < 8:
        return Header()
    separator = first[3:4]
    fields = first.split(separator)
    raw_charset = fields[17].decode("ascii", "replace").strip() if len(fields) > 17 else ""
    charset = raw_charset.split("~")[0].upper()
    encoding = _CHARSETS.get(charset, "")

    def text(index: int) -> str:
        return fields[index].decode(encoding or "latin-1", "replace") if len(fields) > index else ""

    return Header(
        field_separator=separator.decode("latin-1"),
        encoding_characters=text(1) or "^~\\&",
        sending_application=text(2),
        sending_facility=text(3),
        receiving_application=text(4),
        receiving_facility=text(5),
        control_id=text(9),
        processing_id=text(10) or "P",
        version=text(11) or "2.5",
        encoding=encoding,
    )


def decode(block: bytes, header: Header) -> str:
    """The message text in the character set MSH-18 names (UTF-8 when empty)."""
    if not block.startswith(b"MSH"):
        raise MessageError("AR", "not an HL7 v2 message (it does not start with MSH)", "100")
    if not header.encoding:
        raise MessageError("AR", "unknown character set in MSH-18", "103")
    try:
        return block.decode(header.encoding)
    except UnicodeDecodeError:
        raise MessageError(
            "AR", f"the message is not valid {header.encoding} (MSH-18)", "102"
        ) from None


def parse_oru(text: str) -> IncomingReport:
    """Read one ORU^R01 message; raise :class:`MessageError` naming what is wrong."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        message = hl7.parse(text)
        msh = message.segment("MSH")
    except Exception:  # python-hl7 raises whatever it meets; the reason is the same
        raise MessageError(
            "AR", "malformed HL7 message: its MSH segment and fields cannot be read", "100"
        ) from None
    try:
        kind = str(msh(9)(1)(1)).upper()
        trigger = str(msh(9)(1)(2)).upper()
    except Exception:
        raise MessageError(
            "AR", "MSH-9 (message type) is missing or not of the form ORU^R01", "101"
        ) from None
    if (kind, trigger) != ("ORU", "R01"):
        raise MessageError("AR", "unsupported message type: only ORU^R01 is accepted", "200")
    _require(message, "PID")
    _require(message, "OBR")
    patient_id = _value(message, "PID", 3)
    if not patient_id:
        raise MessageError("AE", "PID-3 (patient ID) is empty", "101")
    findings, impression = _report_text(message)
    if not (findings or impression):
        raise MessageError("AE", "no report text: no OBX of type FT, TX or ST with a value", "101")
    service = _value(message, "OBR", 24).upper()
    modality = service if service in _MODALITIES else ""
    return IncomingReport(
        report_type="pathology" if service in _PATHOLOGY_SERVICES else "radiology",
        patient_id=patient_id,
        findings=findings,
        impression=impression,
        accession_number=_value(message, "OBR", 3) or _value(message, "OBR", 18),
        patient_names=tuple(_names(message)),
        birth_date=_date(_value(message, "PID", 7)),
        exam_date=_date(_value(message, "OBR", 7)),
        modality="MR" if modality == "MRI" else modality,
        other_identifiers=tuple(
            v for v in (_value(message, "PID", 2), _value(message, "PID", 4)) if v
        ),
    )


def _require(message: hl7.Message, name: str) -> None:
    try:
        message.segment(name)
    except KeyError:
        raise MessageError("AE", f"the message has no {name} segment", "100") from None


def _value(
    message: hl7.Message,
    segment: str,
    field: int,
    *,
    number: int = 1,
    repeat: int = 1,
    part: int = 1,
) -> str:
    """One component of a field, unescaped ("" when absent)."""
    try:
        return str(message.extract_field(segment, number, field, repeat, part)).strip()
    except (IndexError, KeyError):
        return ""


def _names(message: hl7.Message) -> list[str]:
    names = []
    for repeat in range(1, 5):
        parts = [_value(message, "PID", 5, repeat=repeat, part=p) for p in (1, 2, 3)]
        if not any(parts):
            break
        names.append("^".join(p for p in parts if p))
    return names


def _report_text(message: hl7.Message) -> tuple[str, str]:
    findings: list[str] = []
    impression: list[str] = []
    try:
        segments = message.segments("OBX")
    except KeyError:
        return "", ""
    repetition = message.separators[2]
    for number, obx in enumerate(segments, start=1):
        if _value(message, "OBX", 2, number=number).upper() not in _TEXT_TYPES:
            continue
        if len(obx) <= 5:
            continue
        lines = [message.unescape(part) for part in str(obx[5]).split(repetition)]
        text = "\n".join(lines).replace("\r", "\n").strip()
        if not text:
            continue
        identifier = str(obx[3]) if len(obx) > 3 else ""
        (impression if _IMPRESSION.search(identifier) else findings).append(text)
    return "\n".join(findings), "\n".join(impression)


def _date(value: str) -> date | None:
    digits = value[:8]
    if len(digits) < 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def escape(text: str, header: Header) -> str:
    """``text`` safe inside one HL7 field (escape sequences of HL7 v2 section 2.7)."""
    chars = header.encoding_characters
    component = chars[0] if len(chars) > 0 else "^"
    repetition = chars[1] if len(chars) > 1 else "~"
    esc = chars[2] if len(chars) > 2 else "\\"
    subcomponent = chars[3] if len(chars) > 3 else "&"
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in (
        (header.field_separator, "F"),
        (component, "S"),
        (repetition, "R"),
        (subcomponent, "T"),
    ):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def ack(header: Header, code: str, reason: str = "", error_code: str = "") -> str:
    """An ACK (MSH, MSA and, for AE/AR, ERR) answering the message ``header`` describes."""
    sep = header.field_separator
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    control = "ACK" + now + (header.control_id[-8:] if header.control_id else "")
    msh = sep.join(
        [
            "MSH",
            header.encoding_characters,
            "PACSNODE",
            "PACSNODE",
            escape(header.sending_application, header),
            escape(header.sending_facility, header),
            now,
            "",
            "ACK^R01^ACK",
            control[:20],
            escape(header.processing_id, header),
            escape(header.version, header),
        ]
    )
    msa = sep.join(["MSA", code, escape(header.control_id, header), escape(reason, header)])
    segments = [msh, msa]
    if code != "AA":
        component = header.encoding_characters[0]
        segments.append(
            sep.join(
                [
                    "ERR",
                    "",
                    "",
                    component.join([error_code or "207", "", "HL70357"]),
                    "E",
                    "",
                    "",
                    "",
                    escape(reason, header),
                ]
            )
        )
    return "\r".join(segments) + "\r"
