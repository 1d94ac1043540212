"""The de-identification stage of ingest: burned-in policy, profile, pseudonyms, vault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset

from config import BurnedInPolicy, DeidSettings
from deid.base import Deidentified, DeidRejectedError
from deid.engine import Context, ProfileWalker, compute_age, text_of
from deid.profile import PROFILE_VERSION, TABLE_EDITIONS, Option, Profile, build_profile
from deid.pseudonym import Pseudonymizer
from deid.vault import Vault, VaultRecord

_AGE_REFERENCE_DATES: Final = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_FILE_META_IDENTIFIERS: Final = (
    0x00020016,  # Source Application Entity Title
    0x00020017,  # Sending Application Entity Title
    0x00020018,  # Receiving Application Entity Title
    0x00020026,  # Source Presentation Address
    0x00020027,  # Sending Presentation Address
    0x00020028,  # Receiving Presentation Address
    0x00020100,  # Private Information Creator UID
    0x00020102,  # Private Information
)


@dataclass(frozen=True)
class BurnedInRule:
    """Which instances may show PHI in their pixels, and what to do with them."""

    policy: BurnedInPolicy
    modalities: frozenset[str]
    sop_classes: frozenset[str]

    def reason(self, ds: Dataset) -> str | None:
        """Why ``ds`` may carry burned-in text (a reason quoting no value), or None."""
        if text_of(ds, "BurnedInAnnotation").upper() == "YES":
            return "pixel data may show PHI (burned-in annotation)"
        if text_of(ds, "Modality").upper() in self.modalities:
            return "pixel data may show PHI (modality on burned-in list)"
        if text_of(ds, "SOPClassUID") in self.sop_classes:
            return "pixel data may show PHI (SOP class on burned-in list)"
        return None


def options_from(settings: DeidSettings) -> set[Option]:
    """The profile options the settings choose."""
    chosen = {
        Option.RETAIN_MODIFIED_DATES: settings.retain_modified_dates,
        Option.RETAIN_FULL_DATES: settings.retain_full_dates,
        Option.RETAIN_PATIENT_CHARACTERISTICS: settings.retain_patient_characteristics,
        Option.RETAIN_DEVICE_IDENTITY: settings.retain_device_identity,
        Option.RETAIN_INSTITUTION_IDENTITY: settings.retain_institution_identity,
        Option.RETAIN_UIDS: settings.retain_uids,
        Option.CLEAN_DESCRIPTORS: settings.clean_descriptors,
        Option.RETAIN_SAFE_PRIVATE: bool(settings.private_allow_list),
    }
    return {option for option, on in chosen.items() if on}


class ProfileDeidentifier:
    """PS3.15 Basic Profile with the configured options, applied to every instance.

    Thread-safe: it keeps no per-instance state (one :class:`Context` per call).
    """

    def __init__(
        self,
        settings: DeidSettings,
        pseudonymizer: Pseudonymizer,
        vault: Vault | None,
        profile: Profile | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile or build_profile(options_from(settings))
        self.pseudonyms = pseudonymizer
        self.vault = vault
        self.walker = ProfileWalker(
            self.profile,
            pseudonymizer,
            private_rules=settings.private_rules(),
            shift_dates=settings.retain_modified_dates,
        )
        self.burned_in = BurnedInRule(
            settings.burned_in_policy,
            frozenset(m.upper() for m in settings.burned_in_modalities),
            frozenset(settings.burned_in_sop_classes),
        )

    @property
    def method(self) -> str:
        return self.profile.method_id

    def deidentify(self, dataset: Dataset) -> Deidentified:
        """De-identify ``dataset`` in place (see ``docs/deid.md``).

        Raises
        ------
        DeidRejectedError
            The burned-in policy refuses it, or the profile cannot be applied completely
            (nothing of it is stored then).
        """
        burned_in = self.burned_in.reason(dataset)
        if burned_in and self.burned_in.policy == "reject":
            raise DeidRejectedError(burned_in)
        try:
            context = self._context(dataset)
            age = self._age(dataset)
            records = self._vault_records(dataset, context)
            self.walker.apply(dataset, context)
            if age:
                dataset.PatientAge = age
            self._record_method(dataset, context)
            for tag in _FILE_META_IDENTIFIERS:
                if tag in dataset.file_meta:
                    del dataset.file_meta[tag]
        except DeidRejectedError:
            raise
        except Exception as exc:
            raise DeidRejectedError(
                f"de-identification failed ({type(exc).__name__}); nothing stored"
            ) from None
        if self.vault is not None:
            self.vault.remember(records)
        flagged = burned_in if self.burned_in.policy != "reject" else None
        return Deidentified(
            dataset,
            changed=True,
            method=self.method,
            flag=flagged,
            quarantine=bool(flagged) and self.burned_in.policy == "quarantine",
        )

    def stored_uid(self, original: str) -> str:
        """The UID ``original`` becomes (the profile's U action: a pseudonym, unless UIDs
        are retained)."""
        if Option.RETAIN_UIDS in self.profile.options:
            return original.strip("\0 ")
        return self.pseudonyms.uid(original)

    # ------------------------------------------------------------------ steps

    def _context(self, ds: Dataset) -> Context:
        issuer = text_of(ds, "IssuerOfPatientID")
        patient_key = patient_key_of(ds)
        return Context(
            patient_key=patient_key,
            issuer=issuer,
            pseudo_patient_id=self.pseudonyms.patient_id(patient_key, issuer),
        )

    def _age(self, ds: Dataset) -> str | None:
        if Option.RETAIN_PATIENT_CHARACTERISTICS not in self.profile.options:
            return None
        if text_of(ds, "PatientAge"):
            return None
        return compute_age(ds, _AGE_REFERENCE_DATES)

    def _vault_records(self, ds: Dataset, context: Context) -> list[VaultRecord]:
        patient = context.pseudo_patient_id
        records = [
            VaultRecord(
                "patient",
                patient,
                patient,
                {
                    "patient_id": text_of(ds, "PatientID"),
                    "issuer_of_patient_id": context.issuer,
                    "patient_name": text_of(ds, "PatientName"),
                    "patient_birth_date": text_of(ds, "PatientBirthDate"),
                },
            )
        ]
        study_uid = text_of(ds, "StudyInstanceUID")
        accession = text_of(ds, "AccessionNumber")
        pseudo_study = self.stored_uid(study_uid)
        records.append(
            VaultRecord(
                "study",
                pseudo_study,
                patient,
                {
                    "study_instance_uid": study_uid,
                    "accession_number": accession,
                    "study_id": text_of(ds, "StudyID"),
                    "study_date": text_of(ds, "StudyDate"),
                },
            )
        )
        series_uid = text_of(ds, "SeriesInstanceUID")
        records.append(
            VaultRecord(
                "series",
                self.stored_uid(series_uid),
                patient,
                {"series_instance_uid": series_uid, "study_instance_uid": study_uid},
            )
        )
        if accession:
            records.append(
                VaultRecord(
                    "accession",
                    self.pseudonyms.accession_number(accession),
                    patient,
                    {"accession_number": accession, "study_instance_uid": study_uid},
                )
            )
        return records

    def _record_method(self, ds: Dataset, context: Context) -> None:
        """PS3.15 E.1.1: say that and how the instance was de-identified."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"{PROFILE_VERSION} {TABLE_EDITIONS}"
        items = []
        for code in self.profile.method_codes:
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme_designator
            item.CodeMeaning = code.meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        if Option.RETAIN_FULL_DATES in self.profile.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif Option.RETAIN_MODIFIED_DATES in self.profile.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"


def patient_key_of(ds: Dataset) -> str:
    """The original value the pseudo Patient ID and the date offset are derived from.

    The Patient ID; without one, the name and birth date (so one unidentified patient's
    instances stay together); without those either, the study (one patient per study).
    """
    key = patient_key(
        text_of(ds, "PatientID"), text_of(ds, "PatientName"), text_of(ds, "PatientBirthDate")
    )
    return key or f"\x1fstudy\x1f{text_of(ds, 'StudyInstanceUID')}"


def patient_key(patient_id: str, name: str, birth: str) -> str | None:
    """:func:`patient_key_of` from the patient's originals; ``None`` when the study stands
    for the patient."""
    if patient_id:
        return patient_id
    if name or birth:
        return f"\x1fname\x1f{name}\x1f{birth}"
    return None
