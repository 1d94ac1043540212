"""Deterministic synthetic CT/MR DICOM data with realistic, PHI-laden headers.

Used by the test-suite and by the benchmarks (``from tests.synthetic import generate``).

Layout and size
---------------
Each patient has ``studies_per_patient`` *visits*; every visit produces one CT study
(one axial series of ``ct_slices`` instances) and one MR study (two axial series of
``mr_slices`` instances each: "T1 AX" plus either "T2 TSE" or "DWI b1000").  Hence::

    instances = patients * studies_per_patient * (ct_slices + 2 * mr_slices)

Files go to ``out_dir/<patient>/<study>/<series>/<InstanceNumber>.dcm`` where patient,
study and series are 0-based indices, even study indices are CT and odd ones MR.
Everything is written as Explicit VR Little Endian with a complete file meta header.

Determinism
-----------
Nothing depends on the wall clock or on random UUIDs: UIDs are ``2.25.<int>`` from a
SHA-256 of the seed and the instance's position (joined with a separator), dates and
demographics come from generators seeded the same way, so the same spec writes
byte-identical files.  UIDs depend on the seed and the position only, so datasets
that must not share UIDs need different seeds.

PHI
---
Besides the usual patient/study attributes, every instance carries identifiers in
places de-identification tends to miss: OtherPatientIDsSequence, a private block in
group 0x0009, RequestAttributesSequence, PerformedProcedureStepDescription,
ImageComments and ReferencedImageSequence.  :class:`PatientPHI` lists the values.

Patients cycle through four character sets: the default repertoire (ASCII),
ISO_IR 100 (Latin-1), ISO_IR 192 (UTF-8) and GB18030; some names carry ideographic
and phonetic component groups.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

__all__ = [
    "PatientPHI",
    "SyntheticDataset",
    "SyntheticSpec",
    "derive_uid",
    "generate",
    "generate_transfer_syntax_variants",
    "main",
    "make_instance",
]

IMPLEMENTATION_VERSION_NAME: Final = "PACSNODE_SYN_1"
PRIVATE_CREATOR: Final = "PACSNODE SYNTHETIC"
PRIVATE_GROUP: Final = 0x0009
MAX_STORED_VALUE: Final = 4095  # BitsStored 12

_SEPARATOR: Final = "\x1f"  # unit separator: ("1", "23") and ("12", "3") must differ

_T = TypeVar("_T")


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`generate` writes.

    ``studies_per_patient`` counts visits: each visit is one CT study plus one MR study
    with two series, so a patient has ``2 * studies_per_patient`` studies.
    """

    patients: int = 4
    studies_per_patient: int = 1
    ct_slices: int = 10
    mr_slices: int = 8
    rows: int = 64
    columns: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("patients", "studies_per_patient", "ct_slices", "mr_slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.rows < 8 or self.columns < 8:
            raise ValueError("rows and columns must be at least 8")
        if self.seed < 0:
            raise ValueError("seed must not be negative")

    @property
    def instance_count(self) -> int:
        """Number of files :func:`generate` writes for this spec."""
        per_visit = self.ct_slices + 2 * self.mr_slices
        return self.patients * self.studies_per_patient * per_visit


@dataclass(frozen=True)
class PatientPHI:
    """The original identifiers written into one patient's files.

    ``other_names`` holds the remaining identifying strings: referring, performing and
    operator names, the institution address, the patient's address and telephone
    number, and the other patient ID.  ``specific_character_set`` is ``""`` for the
    default repertoire.
    """

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    accession_numbers: tuple[str, ...]
    study_uids: tuple[str, ...]
    other_names: tuple[str, ...]
    specific_character_set: str


@dataclass(frozen=True)
class SyntheticDataset:
    """Result of :func:`generate`; ``sop_instance_uids[i]`` belongs to ``files[i]``."""

    files: tuple[Path, ...]
    patients: tuple[PatientPHI, ...]
    sop_instance_uids: tuple[str, ...]


# --------------------------------------------------------------------------- hashing


def _digest(seed: int, *parts: object) -> int:
    text = _SEPARATOR.join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def derive_uid(seed: int, *parts: object) -> UID:
    """Return a ``2.25.<int>`` UID from the top 128 bits of a hash of seed and parts.

    At most 44 characters, and an integer never has leading zeros.
    """
    return UID(f"2.25.{_digest(seed, *parts) >> 128}")


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(_digest(seed, *parts))


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


IMPLEMENTATION_CLASS_UID: Final = derive_uid(0, "pacsnode synthetic implementation")

# ------------------------------------------------------------------------- vocabulary

# (SpecificCharacterSet, ((PatientName, PatientSex), ...)): patient i uses set i % 4 and,
# within it, name (i // 4 + seed) % 5, so the default four patients cover every set.
_NAMES: Final[tuple[tuple[str, tuple[tuple[str, str], ...]], ...]] = (
    (
        "",
        (
            ("DOE^JOHN^A", "M"),
            ("SMITH^JANE", "F"),
            ("JOHNSON^ROBERT^^MR", "M"),
            ("BROWN^MARY^ELLEN", "F"),
            ("TAYLOR^JAMES", "M"),
        ),
    ),
    (
        "ISO_IR 100",
        (
            ("Müller^Jürgen", "M"),
            ("Gonçalves^Inês", "F"),
            ("Ångström^Åsa", "F"),
            ("Fernández^José^María", "M"),
            ("Øster^Søren", "M"),
        ),
    ),
    (
        "ISO_IR 192",
        (
            ("Yamada^Tarou=山田^太郎=やまだ^たろう", "M"),
            ("Дмитриев^Иван", "M"),
            ("Hong^Gildong=洪^吉洞=홍^길동", "M"),
            ("Παπαδοπούλου^Ελένη", "F"),
            ("Zhang^Wei=张^伟", "M"),
        ),
    ),
    (
        "GB18030",
        (
            ("Wang^XiaoDong=王^小东", "M"),
            ("王^小明", "M"),
            ("Li^Na=李^娜", "F"),
            ("陈^静", "F"),
            ("Liu^Yang=刘^洋", "F"),
        ),
    ),
)
_REFERRING: Final = (
    "Hartmann^Claudia^^Dr.",
    "Okafor^Chidi^^Dr.",
    "Lindqvist^Erik^^Dr.",
    "Moreau^Sophie^^Dr.",
    "Kowalski^Anna^^Dr.",
)
_RADIOLOGISTS: Final = ("Novak^Petra", "Haddad^Omar", "Brennan^Siobhan", "Vasquez^Lucia")
_TECHNOLOGISTS: Final = ("Keller^Tom", "Nguyen^Linh", "Schmidt^Ina", "Adeyemi^Tunde")
_STREETS: Final = ("Elm Street", "Maple Avenue", "Harbour Road", "Station Lane", "Mill Way")
_CITIES: Final = ("Springfield", "Riverton", "Lakeside", "Fairview")


class _Institution(NamedTuple):
    name: str
    address: str
    issuer_of_patient_id: str


_INSTITUTIONS: Final = (
    _Institution("Springfield General Hospital", "742 Evergreen Terrace, Springfield", "SGH"),
    _Institution("Riverside University Clinic", "1 Riverside Drive, Riverton", "RUC"),
    _Institution("St. Elsewhere Medical Center", "2150 Mercy Road, Lakeside", "SEMC"),
)


@dataclass(frozen=True)
class _Contrast:
    """Stored pixel values of the phantom's tissues and the noise level."""

    background: float
    body: float
    cavity: float  # lungs (CT) or ventricles (MR)
    dense: float  # spine (CT) or marrow-like disc (MR)
    lesion: float
    noise: float


@dataclass(frozen=True)
class _Protocol:
    """One kind of series: its descriptions, geometry, phantom and acquisition tags."""

    study_description: str
    series_description: str
    protocol_name: str
    body_part: str
    half_axes: tuple[float, float]  # body ellipse (rows, columns), as fraction of the FOV
    contrast: _Contrast
    fov_mm: float
    thickness_mm: float
    spacing_mm: float
    first_z_mm: float
    seconds_per_slice: float
    acquisition: Mapping[str, object]  # keyword -> value


def _hu(value: float) -> float:
    """CT stored value for a Hounsfield unit value (RescaleIntercept -1024)."""
    return value + 1024.0


_CT_ACQUISITION: Final[Mapping[str, object]] = {
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "ScanOptions": "HELICAL MODE",
    "KVP": "120",
    "DataCollectionDiameter": "500",
    "GantryDetectorTilt": "0",
    "TableHeight": "150",
    "RotationDirection": "CW",
    "ExposureTime": "500",
    "XRayTubeCurrent": "250",
    "Exposure": "125",
    "FilterType": "BODY FILTER",
    "ConvolutionKernel": "B30f",
    "RescaleIntercept": "-1024",
    "RescaleSlope": "1",
    "RescaleType": "HU",
    "WindowCenter": ["40", "-600"],
    "WindowWidth": ["400", "1500"],
    "WindowCenterWidthExplanation": ["SOFT TISSUE", "LUNG"],
}
_CT_PROTOCOLS: Final = (
    _Protocol(
        study_description="CT CHEST W/O CONTRAST",
        series_description="Thorax 5.0 B30f",
        protocol_name="CHEST_ROUTINE",
        body_part="CHEST",
        half_axes=(0.62, 0.86),
        contrast=_Contrast(_hu(-1000), _hu(40), _hu(-850), _hu(900), _hu(120), noise=12.0),
        fov_mm=350.0,
        thickness_mm=5.0,
        spacing_mm=5.0,
        first_z_mm=-20.0,
        seconds_per_slice=0.5,
        acquisition=_CT_ACQUISITION,
    ),
    _Protocol(
        study_description="CT ABDOMEN PELVIS W CONTRAST",
        series_description="Abdomen 5.0 B30f PV",
        protocol_name="ABD_PELVIS_PORTAL",
        body_part="ABDOMEN",
        half_axes=(0.66, 0.82),
        contrast=_Contrast(_hu(-1000), _hu(60), _hu(-120), _hu(700), _hu(160), noise=12.0),
        fov_mm=380.0,
        thickness_mm=5.0,
        spacing_mm=5.0,
        first_z_mm=-260.0,
        seconds_per_slice=0.5,
        acquisition=_CT_ACQUISITION,
    ),
)

_MR_COMMON: Final[Mapping[str, object]] = {
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
    "MRAcquisitionType": "2D",
    "ImagedNucleus": "1H",
    "NumberOfAverages": "1",
    "WindowCenter": "900",
    "WindowWidth": "1800",
}


def _mr_protocol(
    series_description: str,
    protocol_name: str,
    contrast: _Contrast,
    seconds_per_slice: float,
    acquisition: Mapping[str, object],
) -> _Protocol:
    """An axial brain series: 5 mm slices with a 1 mm gap over a 240 mm field of view."""
    return _Protocol(
        study_description="MRI BRAIN W/O CONTRAST",
        series_description=series_description,
        protocol_name=protocol_name,
        body_part="HEAD",
        half_axes=(0.80, 0.64),
        contrast=contrast,
        fov_mm=240.0,
        thickness_mm=5.0,
        spacing_mm=6.0,
        first_z_mm=60.0,
        seconds_per_slice=seconds_per_slice,
        acquisition={**_MR_COMMON, **acquisition},
    )


_MR_T1: Final = _mr_protocol(
    "T1 AX",
    "t1_se_tra",
    _Contrast(0.0, 900.0, 250.0, 1600.0, 500.0, noise=20.0),
    seconds_per_slice=4.0,
    acquisition={
        "ScanningSequence": "SE",
        "SequenceVariant": "SP",
        "SequenceName": "*se2d1",
        "RepetitionTime": "500",
        "EchoTime": "12",
        "EchoTrainLength": "1",
        "FlipAngle": "90",
    },
)
_MR_SECOND: Final = (
    _mr_protocol(
        "T2 TSE",
        "t2_tse_tra",
        _Contrast(0.0, 700.0, 2600.0, 900.0, 1900.0, noise=25.0),
        seconds_per_slice=6.0,
        acquisition={
            "ScanningSequence": "SE",
            "SequenceVariant": ["SK", "SP", "OSP"],
            "SequenceName": "*tse2d1_15",
            "RepetitionTime": "4000",
            "EchoTime": "95",
            "EchoTrainLength": "15",
            "FlipAngle": "150",
        },
    ),
    _mr_protocol(
        "DWI b1000",
        "ep2d_diff_tra",
        _Contrast(0.0, 350.0, 120.0, 200.0, 1700.0, noise=30.0),
        seconds_per_slice=3.0,
        acquisition={
            "ScanningSequence": "EP",
            "SequenceVariant": ["SK", "SP"],
            "SequenceName": "*ep_b1000t",
            "RepetitionTime": "5200",
            "EchoTime": "84",
            "EchoTrainLength": "1",
            "FlipAngle": "90",
            "DiffusionBValue": 1000.0,
        },
    ),
)


class _Scanner(NamedTuple):
    manufacturer: str
    model: str
    software: str
    field_strength_tesla: str | None  # MR only


_SCANNERS: Final = {
    "CT": (
        _Scanner("SIEMENS", "SOMATOM Definition AS", "syngo CT VA48A", None),
        _Scanner("GE MEDICAL SYSTEMS", "Revolution CT", "revo_ct_22BC.50", None),
    ),
    "MR": (
        _Scanner("SIEMENS", "MAGNETOM Skyra", "syngo MR E11", "3"),
        _Scanner("GE MEDICAL SYSTEMS", "SIGNA Artist", "29.1", "1.5"),
    ),
}
_SOP_CLASSES: Final = {"CT": CTImageStorage, "MR": MRImageStorage}

# -------------------------------------------------------------------------- contexts


@dataclass(frozen=True)
class _Patient:
    index: int
    seed: int
    phi: PatientPHI
    birth: date
    first_visit: date
    weight_kg: float
    size_m: float
    other_patient_id: str
    institution: _Institution
    referring: str
    performing: str
    operator: str
    address: str
    telephone: str


@dataclass(frozen=True)
class _Study:
    patient: _Patient
    index: int
    modality: str
    uid: str
    accession: str
    study_id: str
    start: datetime
    frame_of_reference_uid: str
    scanner: _Scanner


@dataclass(frozen=True)
class _Series:
    study: _Study
    index: int
    uid: str
    protocol: _Protocol
    slices: int
    rows: int
    columns: int

    @property
    def start(self) -> datetime:
        return self.study.start + timedelta(minutes=2 + 7 * self.index)


def _accession(seed: int, patient: int, study: int) -> str:
    return f"ACC{_digest(seed, 'accession', patient) % 10**6:06d}{patient:03d}{study:02d}"


def _study_uid(seed: int, patient: int, study: int) -> str:
    return derive_uid(seed, "study", patient, study)


def _make_patient(spec: SyntheticSpec, index: int) -> _Patient:
    seed = spec.seed
    rng = _rng(seed, "patient", index)
    charset, names = _NAMES[index % len(_NAMES)]
    name, sex = names[(index // len(_NAMES) + seed) % len(names)]
    first_visit = date(2020, 1, 6) + timedelta(days=int(rng.integers(0, 1000)))
    age = int(rng.integers(18, 90))
    birth = date(first_visit.year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    institution = _INSTITUTIONS[index % len(_INSTITUTIONS)]
    referring, performing, operator = (
        _pick(rng, _REFERRING),
        _pick(rng, _RADIOLOGISTS),
        _pick(rng, _TECHNOLOGISTS),
    )
    address = f"{int(rng.integers(1, 400))} {_pick(rng, _STREETS)}, {_pick(rng, _CITIES)}"
    telephone = f"+1-555-{int(rng.integers(0, 10**4)):04d}"
    other_id = f"EXT{_digest(seed, 'other id', index) % 10**7:07d}"
    studies = range(2 * spec.studies_per_patient)
    phi = PatientPHI(
        patient_id=f"MRN{_digest(seed, 'patient id', index) % 10**6:06d}{index:03d}",
        patient_name=name,
        birth_date=_da(birth),
        sex=sex,
        accession_numbers=tuple(_accession(seed, index, s) for s in studies),
        study_uids=tuple(_study_uid(seed, index, s) for s in studies),
        other_names=(
            referring,
            performing,
            operator,
            institution.address,
            address,
            telephone,
            other_id,
        ),
        specific_character_set=charset,
    )
    return _Patient(
        index=index,
        seed=seed,
        phi=phi,
        birth=birth,
        first_visit=first_visit,
        weight_kg=round(float(rng.uniform(48.0, 112.0)), 1),
        size_m=round(float(rng.uniform(1.52, 1.95)), 2),
        other_patient_id=other_id,
        institution=institution,
        referring=referring,
        performing=performing,
        operator=operator,
        address=address,
        telephone=telephone,
    )


def _make_study(patient: _Patient, index: int) -> _Study:
    seed, visit = patient.seed, index // 2
    modality = "CT" if index % 2 == 0 else "MR"
    rng = _rng(seed, "study", patient.index, index)
    day = patient.first_visit + timedelta(days=91 * visit)
    hour = 8 if modality == "CT" else 13
    start = datetime(day.year, day.month, day.day, hour) + timedelta(
        minutes=int(rng.integers(0, 240)), seconds=int(rng.integers(0, 60))
    )
    return _Study(
        patient=patient,
        index=index,
        modality=modality,
        uid=_study_uid(seed, patient.index, index),
        accession=_accession(seed, patient.index, index),
        study_id=str(1000 + _digest(seed, "study id", patient.index, index) % 9000),
        start=start,
        frame_of_reference_uid=derive_uid(seed, "frame of reference", patient.index, index),
        scanner=_SCANNERS[modality][(patient.index + visit) % 2],
    )


def _make_series(study: _Study, index: int, spec: SyntheticSpec) -> _Series:
    variant = study.patient.index + study.index // 2
    if study.modality == "CT":
        protocol, slices = _CT_PROTOCOLS[variant % len(_CT_PROTOCOLS)], spec.ct_slices
    else:
        protocol = _MR_T1 if index == 0 else _MR_SECOND[variant % len(_MR_SECOND)]
        slices = spec.mr_slices
    uid = derive_uid(spec.seed, "series", study.patient.index, study.index, index)
    return _Series(study, index, uid, protocol, slices, spec.rows, spec.columns)


def _series_count(modality: str) -> int:
    return 1 if modality == "CT" else 2


def _sop_instance_uid(series: _Series, number: int) -> UID:
    study = series.study
    return derive_uid(
        study.patient.seed, "sop", study.patient.index, study.index, series.index, number
    )


# --------------------------------------------------------------------------- pixels


@lru_cache(maxsize=8)
def _grid(rows: int, columns: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Normalised (-1..1) row and column coordinates as broadcastable vectors."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, np.newaxis]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[np.newaxis, :]
    return y, x


def _ellipse(
    grid: tuple[NDArray[np.float32], NDArray[np.float32]],
    centre: tuple[float, float],
    half_axes: tuple[float, float],
) -> NDArray[np.bool_]:
    y, x = grid
    return ((y - centre[0]) / half_axes[0]) ** 2 + ((x - centre[1]) / half_axes[1]) ** 2 <= 1.0


def _phantom(series: _Series, number: int) -> NDArray[np.uint16]:
    """A noisy body section whose outline, cavities and lesion change along the stack.

    ``position`` runs through (0, 1) over the series: the body is widest and the
    cavities largest mid-stack, and the lesion circles around the centre.
    """
    protocol, contrast = series.protocol, series.protocol.contrast
    grid = _grid(series.rows, series.columns)
    position = (number - 0.5) / series.slices
    bulge = 0.8 + 0.2 * math.sin(math.pi * position)
    ry, rx = protocol.half_axes[0] * bulge, protocol.half_axes[1] * bulge
    lobe = 0.25 + 0.75 * math.sin(math.pi * position)
    angle = 2.0 * math.pi * position

    image = np.full((series.rows, series.columns), contrast.background, dtype=np.float32)
    image[_ellipse(grid, (0.0, 0.0), (ry, rx))] = contrast.body
    for side in (-1.0, 1.0):
        cavity = _ellipse(grid, (-0.05 * ry, side * 0.45 * rx), (0.5 * ry * lobe, 0.28 * rx * lobe))
        image[cavity] = contrast.cavity
    image[_ellipse(grid, (0.72 * ry, 0.0), (0.15 * ry, 0.15 * ry))] = contrast.dense
    lesion_centre = (0.3 * ry * math.sin(angle), 0.3 * rx * math.cos(angle))
    image[_ellipse(grid, lesion_centre, (0.08 * ry, 0.08 * rx))] = contrast.lesion

    rng = _rng(series.study.patient.seed, "pixels", series.uid, number)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(contrast.noise)
    np.clip(image, 0.0, MAX_STORED_VALUE, out=image)
    return image.astype("<u2")


# --------------------------------------------------------------------------- headers


def _da(day: date) -> str:
    return day.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return moment.strftime("%H%M%S") + fraction


def _dt(moment: datetime) -> str:
    return _da(moment) + _tm(moment)


def _age(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _file_meta(sop_class_uid: UID, sop_instance_uid: UID, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _add_patient(ds: Dataset, patient: _Patient, study: _Study) -> None:
    phi = patient.phi
    if phi.specific_character_set:
        ds.SpecificCharacterSet = phi.specific_character_set
    ds.PatientName = phi.patient_name
    ds.PatientID = phi.patient_id
    ds.IssuerOfPatientID = patient.institution.issuer_of_patient_id
    ds.PatientBirthDate = phi.birth_date
    ds.PatientSex = phi.sex
    ds.PatientAge = _age(patient.birth, study.start.date())
    ds.PatientSize = str(patient.size_m)
    ds.PatientWeight = str(patient.weight_kg)
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.telephone
    other = Dataset()
    other.PatientID = patient.other_patient_id
    other.IssuerOfPatientID = "REGIONAL HIE"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]


def _add_study(ds: Dataset, study: _Study, protocol: _Protocol) -> None:
    patient = study.patient
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = _da(study.start)
    ds.StudyTime = _tm(study.start)
    ds.AccessionNumber = study.accession
    ds.StudyID = study.study_id
    ds.StudyDescription = protocol.study_description
    ds.ReferringPhysicianName = patient.referring
    ds.InstitutionName = patient.institution.name
    ds.InstitutionAddress = patient.institution.address
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName = patient.performing
    ds.OperatorsName = patient.operator
    request = Dataset()
    request.AccessionNumber = study.accession
    request.RequestedProcedureID = f"RP{study.study_id}"
    request.RequestedProcedureDescription = protocol.study_description
    request.ScheduledProcedureStepID = f"SPS{study.study_id}"
    request.ScheduledProcedureStepDescription = protocol.study_description
    ds.RequestAttributesSequence = [request]
    ds.PerformedProcedureStepID = f"PPS{study.study_id}"
    ds.PerformedProcedureStepStartDate = _da(study.start)
    ds.PerformedProcedureStepStartTime = _tm(study.start)
    ds.PerformedProcedureStepDescription = f"{protocol.study_description} ({study.accession})"


def _add_equipment(ds: Dataset, study: _Study) -> None:
    scanner = study.scanner
    ds.Manufacturer = scanner.manufacturer
    ds.ManufacturerModelName = scanner.model
    ds.SoftwareVersions = scanner.software
    ds.DeviceSerialNumber = str(10000 + _digest(0, "serial", scanner.model) % 90000)
    ds.StationName = f"{study.modality}{study.patient.index % len(_INSTITUTIONS) + 1:02d}"
    if scanner.field_strength_tesla is not None:
        ds.MagneticFieldStrength = scanner.field_strength_tesla
        ds.ImagingFrequency = f"{float(scanner.field_strength_tesla) * 42.577:.3f}"  # 1H, MHz


def _add_series(ds: Dataset, series: _Series) -> None:
    study, protocol = series.study, series.protocol
    ds.Modality = study.modality
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = str(series.index + 1)
    ds.SeriesDate = _da(series.start)
    ds.SeriesTime = _tm(series.start)
    ds.SeriesDescription = protocol.series_description
    ds.ProtocolName = protocol.protocol_name
    ds.BodyPartExamined = protocol.body_part
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    if study.modality == "CT":
        ds.ReconstructionDiameter = f"{protocol.fov_mm:g}"
    for keyword, value in protocol.acquisition.items():
        setattr(ds, keyword, value)


def _add_instance(ds: Dataset, series: _Series, number: int) -> None:
    """SOP common, timing, axial plane geometry and the PHI-bearing free-text fields."""
    protocol, patient = series.protocol, series.study.patient
    acquired = series.start + timedelta(seconds=protocol.seconds_per_slice * (number - 1))
    ds.SOPClassUID = _SOP_CLASSES[series.study.modality]
    ds.SOPInstanceUID = _sop_instance_uid(series, number)
    ds.InstanceCreationDate = _da(acquired)
    ds.InstanceCreationTime = _tm(acquired + timedelta(seconds=30))
    ds.InstanceNumber = str(number)
    ds.AcquisitionNumber = "1"
    ds.AcquisitionDate = ds.ContentDate = _da(acquired)
    ds.AcquisitionTime = ds.ContentTime = _tm(acquired)
    ds.AcquisitionDateTime = _dt(acquired)

    row_mm, column_mm = protocol.fov_mm / series.rows, protocol.fov_mm / series.columns
    z = protocol.first_z_mm - protocol.spacing_mm * (number - 1)  # head to feet
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [
        f"{-column_mm * (series.columns - 1) / 2:.4f}",
        f"{-row_mm * (series.rows - 1) / 2:.4f}",
        f"{z:.4f}",
    ]
    ds.PixelSpacing = [f"{row_mm:.6f}", f"{column_mm:.6f}"]
    ds.SliceThickness = str(protocol.thickness_mm)
    ds.SliceLocation = f"{z:.4f}"
    if series.study.modality == "MR":
        ds.SpacingBetweenSlices = str(protocol.spacing_mm)
    if number > 1:
        reference = Dataset()
        reference.ReferencedSOPClassUID = ds.SOPClassUID
        reference.ReferencedSOPInstanceUID = _sop_instance_uid(series, number - 1)
        ds.ReferencedImageSequence = [reference]
    ds.ImageComments = f"Scanned for {patient.phi.patient_name}; no prior comparison."
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", patient.phi.patient_name)
    block.add_new(0x02, "LO", patient.phi.patient_id)


def _add_pixels(ds: Dataset, pixels: NDArray[np.uint16]) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OW", pixels.astype("<u2", copy=False).tobytes())


def _build_instance(series: _Series, number: int) -> Dataset:
    ds = Dataset()
    sop_uid = _sop_instance_uid(series, number)
    ds.file_meta = _file_meta(_SOP_CLASSES[series.study.modality], sop_uid, ExplicitVRLittleEndian)
    _add_patient(ds, series.study.patient, series.study)
    _add_study(ds, series.study, series.protocol)
    _add_equipment(ds, series.study)
    _add_series(ds, series)
    _add_instance(ds, series, number)
    _add_pixels(ds, _phantom(series, number))
    return ds


# --------------------------------------------------------------------------- public


_DEFAULT_SPEC: Final = SyntheticSpec()


def make_instance(
    spec: SyntheticSpec = _DEFAULT_SPEC,
    *,
    patient: int = 0,
    study: int = 0,
    series: int = 0,
    instance_number: int = 1,
) -> Dataset:
    """Build the dataset that :func:`generate` writes to ``<patient>/<study>/<series>/<n>.dcm``.

    Parameters
    ----------
    spec
        Dataset shape and seed; only the positions it generates are valid.
    patient, study, series
        0-based indices.  Even study indices are CT (one series), odd ones MR (two).
    instance_number
        1-based InstanceNumber within the series.

    Raises
    ------
    IndexError
        If the position is not part of ``spec``.
    """
    if not 0 <= patient < spec.patients:
        raise IndexError(f"patient {patient} not in 0..{spec.patients - 1}")
    if not 0 <= study < 2 * spec.studies_per_patient:
        raise IndexError(f"study {study} not in 0..{2 * spec.studies_per_patient - 1}")
    study_context = _make_study(_make_patient(spec, patient), study)
    if not 0 <= series < _series_count(study_context.modality):
        raise IndexError(f"series {series} not in study {study}")
    series_context = _make_series(study_context, series, spec)
    if not 1 <= instance_number <= series_context.slices:
        raise IndexError(f"instance {instance_number} not in 1..{series_context.slices}")
    return _build_instance(series_context, instance_number)


def _iter_series(spec: SyntheticSpec, patient: _Patient) -> Iterator[_Series]:
    for study_index in range(2 * spec.studies_per_patient):
        study = _make_study(patient, study_index)
        for series_index in range(_series_count(study.modality)):
            yield _make_series(study, series_index, spec)


def generate(out_dir: Path, spec: SyntheticSpec = _DEFAULT_SPEC) -> SyntheticDataset:
    """Write ``spec.instance_count`` files under ``out_dir`` (see the module docstring)."""
    files: list[Path] = []
    uids: list[str] = []
    patients = [_make_patient(spec, index) for index in range(spec.patients)]
    for patient in patients:
        for series in _iter_series(spec, patient):
            directory = out_dir / str(patient.index) / str(series.study.index) / str(series.index)
            directory.mkdir(parents=True, exist_ok=True)
            for number in range(1, series.slices + 1):
                ds = _build_instance(series, number)
                path = directory / f"{number}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
                uids.append(ds.SOPInstanceUID)
    return SyntheticDataset(tuple(files), tuple(p.phi for p in patients), tuple(uids))


# ------------------------------------------------------------ transfer syntax variants


def _set_transfer_syntax(uid: UID) -> Callable[[Dataset], None]:
    def convert(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = uid

    return convert


def _to_big_endian(ds: Dataset) -> None:
    """pydicom writes OW bytes as given, so swap the pixel data ourselves."""
    pixels = np.frombuffer(ds.PixelData, dtype="<u2")
    ds.PixelData = pixels.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def _compress_with(uid: UID, plugin: str) -> Callable[[Dataset], None]:
    def convert(ds: Dataset) -> None:
        ds.compress(uid, encoding_plugin=plugin, generate_instance_uid=False)

    return convert


def _to_jpeg_baseline(ds: Dataset) -> None:
    """Window to 8 bits (soft tissue, 40/400 HU) and encode with Pillow.

    The rescale is rewritten so that stored values still map to (clipped) HU.  Eight
    bits is below the CT Image IOD's BitsStored 12-16, but such files do reach archives.
    """
    centre, width = 40.0, 400.0
    hounsfield = ds.pixel_array.astype(np.float32) - 1024.0
    scaled = (hounsfield - (centre - width / 2)) * (255.0 / width)
    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    encoded = buffer.getvalue()
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope = f"{width / 255.0:.6f}"
    ds.RescaleIntercept = f"{centre - width / 2:.1f}"
    ds.WindowCenter, ds.WindowWidth = f"{centre:.0f}", f"{width:.0f}"
    del ds.WindowCenterWidthExplanation
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{pixels.size * 2 / len(encoded):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.add_new(0x7FE00010, "OB", encapsulate([encoded]))
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _variant_converters() -> list[tuple[UID, Callable[[Dataset], None]]]:
    converters: list[tuple[UID, Callable[[Dataset], None]]] = [
        (ImplicitVRLittleEndian, _set_transfer_syntax(ImplicitVRLittleEndian)),
        (ExplicitVRLittleEndian, _set_transfer_syntax(ExplicitVRLittleEndian)),
        (DeflatedExplicitVRLittleEndian, _set_transfer_syntax(DeflatedExplicitVRLittleEndian)),
        (ExplicitVRBigEndian, _to_big_endian),
        (RLELossless, _compress_with(RLELossless, "pydicom")),
        (JPEGBaseline8Bit, _to_jpeg_baseline),
    ]
    for uid, plugin in ((JPEGLSLossless, "pyjpegls"), (JPEG2000Lossless, "pylibjpeg")):
        if plugin in get_encoder(uid).available_plugins:
            converters.append((uid, _compress_with(uid, plugin)))
    return converters


def generate_transfer_syntax_variants(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write one small CT image in several transfer syntaxes.

    Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE, Explicit VR Big Endian,
    RLE Lossless (pydicom's own encoder) and JPEG Baseline (8-bit, encoded with Pillow)
    are always written.  JPEG-LS Lossless and JPEG 2000 Lossless are added only when
    their pydicom encoder plugins (pyjpegls, pylibjpeg with pylibjpeg-openjpeg) are
    importable, and silently skipped otherwise.

    Every variant is its own instance (own SOPInstanceUID and InstanceNumber) in one
    extra series of patient 0's CT study, so all of them can be stored side by side.

    Returns
    -------
    dict[str, Path]
        Transfer syntax UID -> file, named ``<UID keyword>.dcm``.
    """
    spec = SyntheticSpec(patients=1, ct_slices=1, mr_slices=1, seed=seed)
    base = make_instance(spec)
    base.SeriesInstanceUID = derive_uid(seed, "transfer syntax variants")
    base.SeriesNumber = "99"
    base.SeriesDescription = "Transfer syntax variants"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for number, (uid, convert) in enumerate(_variant_converters(), start=1):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = derive_uid(seed, "transfer syntax variant", uid)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = str(number)
        convert(ds)
        path = out_dir / f"{uid.keyword}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written[str(uid)] = path
    return written


# ------------------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.synthetic", description="Write a synthetic CT/MR dataset."
    )
    parser.add_argument("out_dir", type=Path)
    defaults = SyntheticSpec()
    for option in ("patients", "ct_slices", "mr_slices", "rows", "columns", "seed"):
        flag = "--" + option.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, option))
    parser.add_argument("--studies-per-patient", type=int, default=defaults.studies_per_patient)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints one summary line."""
    args = _parse_args(argv)
    spec = SyntheticSpec(
        patients=args.patients,
        studies_per_patient=args.studies_per_patient,
        ct_slices=args.ct_slices,
        mr_slices=args.mr_slices,
        rows=args.rows,
        columns=args.columns,
        seed=args.seed,
    )
    started = time.perf_counter()
    dataset = generate(args.out_dir, spec)
    elapsed = time.perf_counter() - started
    megabytes = sum(path.stat().st_size for path in dataset.files) / 1e6
    print(
        f"{len(dataset.files)} instances, {megabytes:.1f} MB in {elapsed:.1f} s -> {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
