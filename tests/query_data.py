"""A small, odd archive for query tests: synthetic patients in four character sets plus the
kinds of studies real hospitals send (no descriptions, an empty person name, no study date,
one Study Instance UID under two Patient IDs)."""

from __future__ import annotations

from functools import lru_cache

from pydicom.dataset import Dataset

from tests.dicom_bytes import part10
from tests.synthetic import SyntheticSpec, derive_uid, make_instance

SPEC = SyntheticSpec(patients=4, ct_slices=2, mr_slices=1, rows=16, columns=16, seed=7)
ODD_PATIENT_ID = "ODD-1"
SECOND_PATIENT_ID = "SECOND-ID"


def _renumber(ds: Dataset, name: str) -> None:
    ds.SeriesInstanceUID = derive_uid(SPEC.seed, name, "series")
    ds.SOPInstanceUID = derive_uid(SPEC.seed, name, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def synthetic() -> list[Dataset]:
    """Every instance of :data:`SPEC` (4 patients, 8 studies, 16 instances)."""
    result = []
    for patient in range(SPEC.patients):
        for study in range(2):
            series_count = 1 if study % 2 == 0 else 2
            slices = SPEC.ct_slices if study % 2 == 0 else SPEC.mr_slices
            for series in range(series_count):
                for number in range(1, slices + 1):
                    result.append(
                        make_instance(
                            SPEC,
                            patient=patient,
                            study=study,
                            series=series,
                            instance_number=number,
                        )
                    )
    return result


def odd() -> list[Dataset]:
    """Two odd instances: a bare study, and a known study sent under another Patient ID."""
    bare = make_instance(SPEC, patient=0, study=0)
    bare.StudyInstanceUID = derive_uid(SPEC.seed, "bare study")
    _renumber(bare, "bare")
    bare.PatientID = ODD_PATIENT_ID
    bare.PatientName = "^^^^"
    for keyword in (
        "StudyDescription",
        "SeriesDescription",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "RequestAttributesSequence",
    ):
        delattr(bare, keyword)
    twin = make_instance(SPEC, patient=1, study=0)
    _renumber(twin, "twin")
    twin.PatientID = SECOND_PATIENT_ID
    return [bare, twin]


@lru_cache(maxsize=1)
def archive() -> tuple[bytes, ...]:
    """Part 10 bytes of every instance of the test archive (synthetic first, then odd)."""
    return tuple(part10(ds) for ds in [*synthetic(), *odd()])
