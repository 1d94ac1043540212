"""Deterministic pseudonyms: keyed HMAC-SHA256 of the original value.

The same original always gives the same pseudonym under one key, so a resent study, a later
study of the same patient and a report that arrives before or after its images all meet on
the same values without anyone keeping the originals in the clear. Every pseudonym kind has
its own domain in the HMAC input, so a patient ID and an accession number that happen to be
equal do not give related pseudonyms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import date, timedelta
from typing import Final

from pydantic import SecretBytes

_SEPARATOR: Final = "\x1f"
_DATE: Final = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
MIN_KEY_BYTES: Final = 32


class Pseudonymizer:
    """Pseudonyms for patient IDs, accession numbers, UIDs and per-patient date offsets.

    Parameters
    ----------
    key
        The node's HMAC key (at least 32 bytes); several nodes sharing an archive share it.
    date_shift_days
        Inclusive range ``(low, high)`` of the per-patient date offset in days; 0 is never
        chosen, so the range must hold at least one non-zero day.
    """

    def __init__(self, key: bytes | SecretBytes, date_shift_days: tuple[int, int] = (-1095, -1)):
        secret = key.get_secret_value() if isinstance(key, SecretBytes) else key
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"the HMAC key must have at least {MIN_KEY_BYTES} bytes")
        low, high = date_shift_days
        if low > high or (low == high == 0):
            raise ValueError("date shift range must be low <= high and hold a non-zero day")
        self._key = SecretBytes(secret)
        self._low, self._high = low, high

    def __repr__(self) -> str:
        return f"Pseudonymizer(date_shift_days=({self._low}, {self._high}))"

    def _digest(self, domain: str, *parts: str) -> bytes:
        message = _SEPARATOR.join((domain, *parts)).encode("utf-8", "surrogateescape")
        return hmac.new(self._key.get_secret_value(), message, hashlib.sha256).digest()

    def patient_id(self, original: str, issuer: str = "") -> str:
        """Pseudo Patient ID: ``P`` and 16 base32 characters (80 bits), issuer-aware."""
        return "P" + _base32(self._digest("patient", issuer.strip(), original.strip()), 16)

    def patient_name(self, pseudo_patient_id: str) -> str:
        """The pseudo Patient's Name: the pseudo ID as the family name component."""
        return pseudo_patient_id

    def accession_number(self, original: str, issuer: str = "") -> str:
        """Pseudo Accession Number: ``A`` and 15 base32 characters (fits SH, 16 chars)."""
        return "A" + _base32(self._digest("accession", issuer.strip(), original.strip()), 15)

    def uid(self, original: str) -> str:
        """``2.25.<integer>`` from 128 bits of the HMAC (at most 44 characters)."""
        digest = self._digest("uid", original.strip("\0 "))
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def token(self, domain: str, original: str, length: int = 12) -> str:
        """A short pseudonym for other identifiers (AE titles, IDs inside sequences)."""
        return _base32(self._digest(domain, original.strip()), length)

    def date_offset_days(self, patient_id: str, issuer: str = "") -> int:
        """The patient's date offset: deterministic, within the configured range, never 0."""
        value = int.from_bytes(self._digest("date", issuer.strip(), patient_id.strip())[:8], "big")
        span = self._high - self._low + 1
        offset = self._low + value % span
        if offset == 0:  # 0 is in the range: take the next day instead (or the only other)
            offset = 1 if self._high >= 1 else -1
        return offset

    def shift_date(self, value: str, patient_id: str, issuer: str = "") -> str:
        """Shift a DA value (``YYYYMMDD``, also ACR-NEMA ``YYYY.MM.DD``) by the offset.

        Raises ``ValueError`` (without quoting the value) when it is not a date.
        """
        day = parse_date(value)
        try:
            shifted = day + timedelta(days=self.date_offset_days(patient_id, issuer))
        except OverflowError:
            raise ValueError("shifted date is out of range") from None
        return format_date(shifted)


def parse_date(value: str) -> date:
    """A DA value as a date; ``ValueError`` without the value in the message otherwise."""
    match = _DATE.match(value.strip())
    if not match:
        raise ValueError("not a DICOM date (YYYYMMDD)")
    year, month, day = (int(group) for group in match.groups())
    try:
        return date(year, month, day)
    except ValueError:
        raise ValueError("not a valid calendar date") from None


def format_date(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _base32(digest: bytes, length: int) -> str:
    return base64.b32encode(digest).decode("ascii")[:length]
