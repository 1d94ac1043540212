"""Settings of de-identification on arrival (section ``[deid]``, ``PACSNODE_DEID__*``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BurnedInPolicy = Literal["reject", "quarantine", "accept_flagged"]

_PRIVATE_RULE = re.compile(r"^\(?([0-9A-Fa-f]{4}),\s*xx([0-9A-Fa-f]{2})\)?\s+(.+)$")

DEFAULT_BURNED_IN_SOP_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image (retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image (retired)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image
]


class DeidSettings(BaseModel):
    """How instances are de-identified on arrival (PS3.15 Annex E Basic Profile + options)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description=(
            "De-identify every instance on arrival. false stores instances as received "
            "(only for archives that hold no patient data); the node logs a warning."
        ),
    )
    secrets_dir: Path | None = Field(
        default=None,
        description=(
            "Folder of the HMAC key and the vault key (files 0600, made on "
            "first start). Nodes sharing one archive must share it. Default: <data_dir>/secrets."
        ),
    )
    retain_modified_dates: bool = Field(
        default=True,
        description=(
            "Retain Longitudinal Temporal Information with Modified Dates: shift every date "
            "by a per-patient offset (intervals between a patient's exams are kept)."
        ),
    )
    retain_full_dates: bool = Field(
        default=False,
        description="Retain Longitudinal Temporal Information with Full Dates (dates unchanged).",
    )
    date_shift_min_days: int = Field(
        default=-1095, description="Lowest per-patient date offset in days (0 is never used)."
    )
    date_shift_max_days: int = Field(
        default=-1, description="Highest per-patient date offset in days."
    )
    retain_patient_characteristics: bool = Field(
        default=True, description="Retain Patient Characteristics: sex, age, size, weight."
    )
    retain_device_identity: bool = Field(
        default=False, description="Retain Device Identity: station names, serial numbers."
    )
    retain_institution_identity: bool = Field(
        default=False,
        description="Retain Institution Identity: institution name, address, department.",
    )
    retain_uids: bool = Field(
        default=False,
        description="Retain UIDs (off: every instance UID is replaced by 2.25.<hmac>).",
    )
    clean_descriptors: bool = Field(
        default=True,
        description=(
            "Clean Descriptors: keep descriptions, comments and protocol names, with names "
            "and IDs found in the instance stripped from them."
        ),
    )
    private_allow_list: list[str] = Field(
        default_factory=list,
        description=(
            'Private attributes to keep, as "(gggg,xxee) CREATOR", e.g. '
            '"(0019,xx0c) SIEMENS MR HEADER". Every other private attribute is removed.'
        ),
    )
    burned_in_policy: BurnedInPolicy = Field(
        default="reject",
        description=(
            "Instances that may show PHI in their pixels: reject (C-STORE 0xC001), quarantine "
            "(stored, hidden from queries until reviewed) or accept_flagged (stored, marked)."
        ),
    )
    burned_in_modalities: list[str] = Field(
        default_factory=lambda: ["US", "IVUS", "DOC", "OT", "XC", "ES"],
        description="Modalities treated as carrying burned-in text.",
    )
    burned_in_sop_classes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BURNED_IN_SOP_CLASSES),
        description="SOP Class UIDs treated as carrying burned-in text.",
    )

    @field_validator("private_allow_list")
    @classmethod
    def _check_private_rules(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            match = _PRIVATE_RULE.match(rule.strip())
            if not match or not int(match.group(1), 16) & 1:
                raise ValueError(
                    f"private_allow_list entry {rule!r} is not '(gggg,xxee) CREATOR' with an "
                    "odd group"
                )
        return rules

    @model_validator(mode="after")
    def _check_dates(self) -> DeidSettings:
        if self.retain_full_dates and self.retain_modified_dates:
            raise ValueError("deid: retain_full_dates and retain_modified_dates are exclusive")
        low, high = self.date_shift_min_days, self.date_shift_max_days
        if low > high or low == high == 0:
            raise ValueError(
                "deid: date_shift_min_days must be <= date_shift_max_days, and the range "
                "must hold a day other than 0"
            )
        return self

    def private_rules(self) -> frozenset[tuple[int, int, str]]:
        """The allow-list as ``(group, element low byte, creator)`` triples."""
        rules = set()
        for rule in self.private_allow_list:
            match = _PRIVATE_RULE.match(rule.strip())
            assert match is not None  # checked by the validator
            rules.add((int(match.group(1), 16), int(match.group(2), 16), match.group(3).strip()))
        return frozenset(rules)
