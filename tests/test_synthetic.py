"""Tests for the synthetic DICOM generator (tests/synthetic.py)."""

from __future__ import annotations

import io
import itertools
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.synthetic import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PatientPHI,
    SyntheticDataset,
    SyntheticSpec,
    generate,
    generate_transfer_syntax_variants,
    main,
    make_instance,
)

SPEC = SyntheticSpec()
CODECS = {"": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8", "GB18030": "gb18030"}
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
MANDATORY_VARIANTS = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGBaseline8Bit,
}


def _write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _position(root: Path, path: Path) -> tuple[int, int, int, int]:
    """(patient, study, series, instance number) from the documented file layout."""
    patient, study, series, name = path.relative_to(root).parts
    return int(patient), int(study), int(series), int(name.removesuffix(".dcm"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def dataset(root: Path) -> SyntheticDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom reports invalid values as warnings
        return generate(root, SPEC)


@pytest.fixture(scope="module")
def instances(dataset: SyntheticDataset) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in dataset.files]


def test_count_and_layout(root: Path, dataset: SyntheticDataset, instances: list[Dataset]) -> None:
    expected = SPEC.patients * SPEC.studies_per_patient * (SPEC.ct_slices + 2 * SPEC.mr_slices)
    assert len(dataset.files) == SPEC.instance_count == expected == 104
    assert sorted(p.relative_to(root) for p in root.rglob("*.dcm")) == sorted(
        p.relative_to(root) for p in dataset.files
    )
    for path, ds in zip(dataset.files, instances, strict=True):
        _, study, series, number = _position(root, path)
        assert ds.Modality == ("CT" if study % 2 == 0 else "MR")
        assert ds.SeriesNumber == series + 1
        assert ds.InstanceNumber == number
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.ImplementationClassUID


def test_generation_is_byte_identical(
    root: Path, dataset: SyntheticDataset, tmp_path: Path
) -> None:
    again = generate(tmp_path, SPEC)
    assert [p.relative_to(tmp_path) for p in again.files] == [
        p.relative_to(root) for p in dataset.files
    ]
    for first, second in zip(dataset.files, again.files, strict=True):
        assert first.read_bytes() == second.read_bytes(), first
    assert again.patients == dataset.patients
    assert again.sop_instance_uids == dataset.sop_instance_uids


def test_make_instance_matches_generated_file(root: Path, dataset: SyntheticDataset) -> None:
    for path in (dataset.files[0], dataset.files[13], dataset.files[-1]):
        patient, study, series, number = _position(root, path)
        ds = make_instance(
            SPEC, patient=patient, study=study, series=series, instance_number=number
        )
        assert _write(ds) == path.read_bytes()


def test_seed_changes_identifiers() -> None:
    first, other = make_instance(), make_instance(SyntheticSpec(seed=1))
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "AccessionNumber"):
        assert first.get(keyword) != other.get(keyword)


def test_every_file_carries_its_patients_phi(
    root: Path, dataset: SyntheticDataset, instances: list[Dataset]
) -> None:
    for path, ds in zip(dataset.files, instances, strict=True):
        phi = dataset.patients[_position(root, path)[0]]
        assert str(ds.PatientName) == phi.patient_name
        assert ds.PatientID == phi.patient_id
        assert ds.PatientBirthDate == phi.birth_date
        assert ds.PatientSex == phi.sex
        assert ds.AccessionNumber in phi.accession_numbers
        assert ds.StudyInstanceUID in phi.study_uids
        assert phi.accession_numbers.index(ds.AccessionNumber) == phi.study_uids.index(
            ds.StudyInstanceUID
        )
        for keyword in ("ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName"):
            assert str(ds[keyword].value) in phi.other_names
        for keyword in ("InstitutionAddress", "PatientAddress", "PatientTelephoneNumbers"):
            assert ds[keyword].value in phi.other_names
        assert ds.OtherPatientIDsSequence[0].PatientID in phi.other_names
        assert ds.RequestAttributesSequence[0].AccessionNumber == ds.AccessionNumber
        assert ds.AccessionNumber in ds.PerformedProcedureStepDescription
        assert phi.patient_name in ds.ImageComments
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert block[0x01].value == phi.patient_name
        assert block[0x02].value == phi.patient_id


def _assert_names_round_trip(files: tuple[Path, ...], patients: tuple[PatientPHI, ...]) -> None:
    for path in files:
        raw = path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(raw))
        phi = patients[int(path.parts[-4])]
        assert ds.get("SpecificCharacterSet", "") == phi.specific_character_set
        assert str(ds.PatientName) == phi.patient_name
        encoded = phi.patient_name.encode(CODECS[phi.specific_character_set])
        assert raw.count(encoded) == 3  # PatientName, private block, ImageComments


def test_names_round_trip_in_every_character_set(dataset: SyntheticDataset) -> None:
    assert {p.specific_character_set for p in dataset.patients} == set(CODECS)
    assert any("=" in p.patient_name for p in dataset.patients)  # ideographic groups
    _assert_names_round_trip(dataset.files, dataset.patients)


def test_every_name_in_the_pools_round_trips(tmp_path: Path) -> None:
    spec = SyntheticSpec(patients=20, ct_slices=1, mr_slices=1, rows=8, columns=8)
    small = generate(tmp_path, spec)
    assert len({p.patient_name for p in small.patients}) == spec.patients
    _assert_names_round_trip(small.files, small.patients)


def test_uids_are_valid_and_unique(dataset: SyntheticDataset, instances: list[Dataset]) -> None:
    by_kind: dict[str, set[str]] = defaultdict(set)
    for ds in instances:
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            by_kind[keyword].add(ds[keyword].value)
        by_kind["ImplementationClassUID"].add(ds.file_meta.ImplementationClassUID)
    all_uids = set().union(*by_kind.values())
    assert all(len(uid) <= 64 and UID_PATTERN.fullmatch(uid) for uid in all_uids)
    assert sum(len(uids) for uids in by_kind.values()) == len(all_uids)  # no reuse across kinds
    assert [ds.SOPInstanceUID for ds in instances] == list(dataset.sop_instance_uids)
    assert len(by_kind["SOPInstanceUID"]) == len(instances)
    studies = SPEC.patients * 2 * SPEC.studies_per_patient
    assert len(by_kind["StudyInstanceUID"]) == len(by_kind["FrameOfReferenceUID"]) == studies
    assert len(by_kind["SeriesInstanceUID"]) == SPEC.patients * SPEC.studies_per_patient * 3
    assert by_kind["StudyInstanceUID"] == {u for p in dataset.patients for u in p.study_uids}


def _series(instances: list[Dataset]) -> dict[str, list[Dataset]]:
    grouped: dict[str, list[Dataset]] = defaultdict(list)
    for ds in instances:
        grouped[ds.SeriesInstanceUID].append(ds)
    return grouped


def test_series_geometry_is_a_consistent_axial_stack(instances: list[Dataset]) -> None:
    for stack in _series(instances).values():
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in stack])
        assert np.allclose(np.diff(z), -float(stack[0].get("SpacingBetweenSlices", 5.0)))
        for previous, ds in zip([None, *stack[:-1]], stack, strict=True):
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])
            assert ds.PixelSpacing == stack[0].PixelSpacing
            assert ds.SliceThickness == stack[0].SliceThickness
            assert ds.FrameOfReferenceUID == stack[0].FrameOfReferenceUID
            if previous is None:
                assert "ReferencedImageSequence" not in ds
            else:
                reference = ds.ReferencedImageSequence[0]
                assert reference.ReferencedSOPInstanceUID == previous.SOPInstanceUID


def test_pixels_are_structured_and_vary_by_slice(instances: list[Dataset]) -> None:
    for stack in _series(instances).values():
        arrays = [ds.pixel_array for ds in stack]
        first = stack[0]
        assert arrays[0].shape == (SPEC.rows, SPEC.columns)
        assert (first.BitsAllocated, first.BitsStored, first.HighBit) == (16, 12, 11)
        assert all(a.std() > 100 and a.max() <= 4095 for a in arrays)
        assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(arrays))
    ct = next(ds for ds in instances if ds.Modality == "CT")
    hounsfield = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert hounsfield.min() < -900  # air around the body
    assert np.mean((hounsfield > -50) & (hounsfield < 150)) > 0.2  # soft tissue


def test_transfer_syntax_variants(tmp_path: Path) -> None:
    variants = generate_transfer_syntax_variants(tmp_path / "a")
    assert set(variants) >= MANDATORY_VARIANTS
    reference = pydicom.dcmread(variants[ExplicitVRLittleEndian]).pixel_array
    sop_uids = set()
    for uid, path in variants.items():
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == uid
        sop_uids.add(ds.SOPInstanceUID)
        if uid == JPEGBaseline8Bit:
            assert ds.BitsAllocated == 8 and ds.LossyImageCompression == "01"
            hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            windowed = np.clip(reference.astype(float) - 1024, -160, 240)
            assert np.abs(hounsfield - windowed).mean() < 10
        else:
            assert np.array_equal(ds.pixel_array, reference)
    assert len(sop_uids) == len(variants)
    again = generate_transfer_syntax_variants(tmp_path / "b")
    assert all(variants[uid].read_bytes() == again[uid].read_bytes() for uid in variants)


def test_cli_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--patients", "2", "--ct-slices", "2", "--mr-slices", "1", "--rows", "16"]
    assert main([str(tmp_path), *args, "--columns", "16", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("8 instances, ")
    assert len(list(tmp_path.rglob("*.dcm"))) == 8


def test_invalid_requests_are_rejected() -> None:
    with pytest.raises(ValueError, match="patients"):
        SyntheticSpec(patients=0)
    with pytest.raises(IndexError):
        make_instance(SPEC, study=0, series=1)  # CT studies have one series
    with pytest.raises(IndexError):
        make_instance(SPEC, instance_number=SPEC.ct_slices + 1)
