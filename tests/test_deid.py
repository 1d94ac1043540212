"""De-identification in process: the profile from the tables, pseudonyms, the walk over
data sets (hypothesis), bad input, the burned-in policy, the vault and its audit trail."""

from __future__ import annotations

import itertools
import json
import os
import stat
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select

from catalog import catalog_stats
from catalog.models import AuditEvent, Instance, QuarantinedInstance, VaultEntry
from config import DeidSettings, Settings
from deid import (
    Accessor,
    Action,
    Option,
    ProfileDeidentifier,
    Pseudonymizer,
    SecretsError,
    build_profile,
    load_secrets,
)
from deid.check import HeaderChecker, OriginalIndex
from deid.profile import load_rows
from ingest import Outcome, Source
from ingest.integrity import check as verify
from node.app import Core, build_core
from tests.dicom_bytes import part10, sample
from tests.synthetic import SyntheticSpec, make_instance

SOURCE = Source(door="folder", remote="test")
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
DEFAULT = DeidSettings()


def deidentifier(options: DeidSettings = DEFAULT, key: bytes = KEY) -> ProfileDeidentifier:
    return ProfileDeidentifier(options, Pseudonymizer(KEY if key is None else key), vault=None)


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if p.is_file())


# ------------------------------------------------------------------------------ profile


def test_profile_comes_from_both_tables_with_masks_and_private_rows() -> None:
    rows = load_rows()
    assert len(rows) == 621 + 35
    profile = build_profile([])
    assert profile.action_for(0x00100010) is Action.EMPTY  # Patient's Name: Z
    assert profile.action_for(0x00100020) is Action.DUMMY  # Patient ID: Z/D -> D
    assert profile.action_for(0x00080080) is Action.DUMMY  # Institution Name: X/Z/D -> D
    assert profile.action_for(0x00081140) is Action.KEEP_SEQUENCE  # X/Z/U*
    assert profile.action_for(0x00080018) is Action.UID
    assert profile.action_for(0x00100011) is Action.REMOVE  # 2026c only: Person Names to Use
    assert profile.action_for(0x50023000) is Action.REMOVE  # curve data (50xx,xxxx)
    assert profile.action_for(0x60024000) is Action.REMOVE  # overlay comments (60xx,4000)
    assert profile.action_for(0x00291010) is Action.REMOVE  # private
    assert profile.action_for(0x00280010) is None  # Rows: not in the profile, kept


def test_options_override_the_basic_profile_and_are_recorded() -> None:
    profile = build_profile(
        [Option.RETAIN_UIDS, Option.RETAIN_MODIFIED_DATES, Option.CLEAN_DESCRIPTORS]
    )
    assert profile.action_for(0x00080018) is Action.KEEP
    assert profile.action_for(0x00080020) is Action.CLEAN  # Study Date: shifted
    assert profile.action_for(0x0008103E) is Action.CLEAN  # Series Description: cleaned
    assert build_profile([]).action_for(0x0008103E) is Action.REMOVE
    codes = [code.value for code in profile.method_codes]
    assert codes == ["113100", "113110", "113107", "113105"]
    assert profile.method_id == "pacsnode-deid-1:113100+113105+113107+113110"


# ---------------------------------------------------------------------------- pseudonyms


def test_pseudonyms_are_stable_issuer_aware_and_keyed() -> None:
    first, again, other = Pseudonymizer(KEY), Pseudonymizer(KEY), Pseudonymizer(OTHER_KEY)
    assert first.patient_id("MRN1") == again.patient_id("MRN1")
    assert first.patient_id("MRN1") != other.patient_id("MRN1")
    assert first.patient_id("MRN1", "SGH") != first.patient_id("MRN1", "RUC")
    assert len(first.accession_number("ACC1")) == 16
    uid = first.uid("1.2.3")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid == again.uid("1.2.3")
    assert "\\x00" not in repr(first) and "key" not in repr(first)


def test_short_keys_and_empty_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Pseudonymizer(b"short")
    with pytest.raises(ValueError, match="non-zero"):
        Pseudonymizer(KEY, (0, 0))


@given(
    patient=st.text(min_size=1, max_size=20),
    low=st.integers(-2000, 5),
    span=st.integers(0, 2000),
    days=st.lists(st.integers(0, 20000), min_size=2, max_size=5),
)
def test_date_offsets_stay_in_range_are_never_zero_and_keep_intervals(
    patient: str, low: int, span: int, days: list[int]
) -> None:
    high = low + span
    if low == high == 0:
        return
    pseudo = Pseudonymizer(KEY, (low, high))
    offset = pseudo.date_offset_days(patient)
    assert low <= offset <= high or (low == 0 or high == 0)
    assert offset != 0
    dates = [date(1990, 1, 1) + timedelta(days=d) for d in days]
    shifted = [date.fromisoformat(pseudo.shift_date(d.strftime("%Y%m%d"), patient)) for d in dates]
    assert [(b - a).days for a, b in itertools.pairwise(dates)] == [
        (b - a).days for a, b in itertools.pairwise(shifted)
    ]


def test_shift_date_refuses_non_dates_without_quoting_them() -> None:
    with pytest.raises(ValueError) as caught:
        Pseudonymizer(KEY).shift_date("SECRET-19800101x", "P")
    assert "SECRET" not in str(caught.value)


# ------------------------------------------------------------------------------- secrets


def test_secrets_are_generated_once_private_and_shared_by_racing_nodes(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load_secrets(folder))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.hmac_key.get_secret_value() for r in results}) == 1
    for file in folder.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert "*" in repr(results[0].hmac_key)
    os.chmod(folder / "hmac.key", 0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_secrets(folder)
    with pytest.raises(SecretsError, match="does not exist"):
        load_secrets(tmp_path / "none", create=False)


# ---------------------------------------------------------------------- the walk (hypothesis)

_LISTED_TEXT = [
    ("OtherPatientIDs", "LO"),
    ("PatientAddress", "LO"),
    ("PatientTelephoneNumbers", "SH"),
    ("ReferringPhysicianName", "PN"),
    ("PerformingPhysicianName", "PN"),
    ("InstitutionName", "LO"),
    ("StationName", "SH"),
    ("DeviceSerialNumber", "LO"),
    ("RequestedProcedureID", "SH"),
    ("StudyID", "SH"),
    ("PatientComments", "LT"),
    ("AdditionalPatientHistory", "LT"),
    ("MilitaryRank", "LO"),
    ("BranchOfService", "LO"),
    ("Occupation", "SH"),
    ("PatientMotherBirthName", "PN"),
]
_DEFAULT_PROFILE = deidentifier().profile


def _tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword) or 0)


_token = st.from_regex(r"ZQ[0-9A-F]{8}", fullmatch=True)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[Dataset, set[str]]:
    """A CT with a random choice of identifying attributes holding distinctive tokens,
    some inside a kept sequence; returns it with the tokens that must all disappear."""
    ds = make_instance(SyntheticSpec(patients=1, ct_slices=1, mr_slices=1, rows=8, columns=8))
    tokens: set[str] = set()
    chosen = draw(st.lists(st.sampled_from(_LISTED_TEXT), unique=True, max_size=8))
    for keyword, _vr in chosen:
        token = draw(_token)
        if _DEFAULT_PROFILE.action_for(_tag(keyword)) is Action.CLEAN:
            # Clean Descriptors keeps the text but not the identifiers in it.
            setattr(ds, keyword, f"seen {token} for {ds.PatientID} {ds.PatientName}")
        else:
            setattr(ds, keyword, token)
            tokens.add(token)
    if draw(st.booleans()):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = "1.2.3." + str(draw(st.integers(1, 10**9)))
        person = draw(_token)
        item.PerformingPhysicianName = person
        tokens.add(person)
        ds.ReferencedImageSequence = Sequence([item])
    if draw(st.booleans()):
        ds.add_new(0x00990010, "LO", "ACME")
        secret = draw(_token)
        ds.add_new(0x00991001, "LO", secret)
        tokens.add(secret)
    if draw(st.booleans()):
        ds.add_new(0x60003000, "OW", b"\0" * 8)
        ds.add_new(0x60000010, "US", 8)
    tokens.update({ds.PatientID, str(ds.PatientName), ds.AccessionNumber})
    return ds, tokens


def _all_strings(ds: Dataset) -> str:
    parts = []
    for element in ds.iterall():
        if element.tag == 0x7FE00010:
            continue
        parts.append(str(element.value))
    return "\n".join(parts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=datasets())
def test_nothing_the_profile_removes_survives(case: tuple[Dataset, set[str]]) -> None:
    ds, tokens = case
    original_uid = ds.SOPInstanceUID
    referenced = (
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        if "ReferencedImageSequence" in ds
        else None
    )
    stage = deidentifier()
    result = stage.deidentify(ds)
    out = result.dataset
    text = _all_strings(out)
    for token in tokens:
        assert token not in text
    profile = stage.profile
    for element in out.iterall():
        tag = int(element.tag)
        action = profile.action_for(tag)
        assert action is not Action.REMOVE, element.keyword
        assert not tag >> 16 & 1, "private attribute survived"
        if action is Action.EMPTY and tag not in (0x00100010, 0x00080050):
            assert element.value in (None, "", []), element.keyword
    assert out.SOPInstanceUID == stage.pseudonyms.uid(original_uid)
    if referenced is not None:
        assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == stage.pseudonyms.uid(
            referenced
        )
    assert out.PatientIdentityRemoved == "YES"
    checker = HeaderChecker(profile, OriginalIndex([]))
    assert checker.check(out, "x") == []


def test_references_between_instances_stay_consistent_and_dates_keep_their_intervals() -> None:
    spec = SyntheticSpec(patients=1, studies_per_patient=2, ct_slices=2, mr_slices=1)
    first = make_instance(spec, study=0, instance_number=1)
    second = make_instance(spec, study=0, instance_number=2)
    later = make_instance(spec, study=2, instance_number=1)
    gap = (date.fromisoformat(later.StudyDate) - date.fromisoformat(first.StudyDate)).days
    first_date, age = first.StudyDate, first.PatientAge
    stage = deidentifier()
    a, b, c = (stage.deidentify(ds).dataset for ds in (first, second, later))
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.PatientID == c.PatientID
    assert (date.fromisoformat(c.StudyDate) - date.fromisoformat(a.StudyDate)).days == gap
    assert a.StudyDate != first_date
    assert a.PatientAge == age
    assert not a.get("PatientBirthDate")


def test_a_patient_id_inside_a_kept_sequence_gets_the_pseudonym_of_its_own_issuer() -> None:
    """A nested Patient ID meets the same patient's top-level pseudonym (same ID, issuer)."""
    elsewhere = sample()
    elsewhere.PatientID, elsewhere.IssuerOfPatientID = "MRN-77", "OTHER-HOSP"
    ds = sample()
    reference = Dataset()
    reference.PatientID, reference.IssuerOfPatientID = "MRN-77", "OTHER-HOSP"
    reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([reference])
    stage = deidentifier()
    nested = stage.deidentify(ds).dataset.ReferencedImageSequence[0].PatientID
    assert nested == stage.deidentify(elsewhere).dataset.PatientID
    assert nested != "MRN-77"


def test_age_is_computed_from_the_original_dates_and_descriptors_are_cleaned() -> None:
    ds = make_instance()
    del ds.PatientAge
    birth, study = date.fromisoformat(ds.PatientBirthDate), date.fromisoformat(ds.StudyDate)
    years = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
    name, accession = str(ds.PatientName), ds.AccessionNumber
    out = deidentifier().deidentify(ds).dataset
    assert out.PatientAge == f"{years:03d}Y"
    assert accession not in out.PerformedProcedureStepDescription
    assert out.PerformedProcedureStepDescription.startswith("CT ")
    assert name not in str(out.get("ImageComments", ""))
    assert out.SeriesDescription  # kept (Clean Descriptors)
    plain = deidentifier(DeidSettings(clean_descriptors=False)).deidentify(make_instance())
    assert "SeriesDescription" not in plain.dataset


def test_options_change_what_is_kept() -> None:
    ds = make_instance()
    uid, date_, institution = ds.SOPInstanceUID, ds.StudyDate, ds.InstitutionName
    keep = DeidSettings(
        retain_uids=True,
        retain_modified_dates=False,
        retain_full_dates=True,
        retain_institution_identity=True,
        retain_patient_characteristics=False,
    )
    out = deidentifier(keep).deidentify(ds).dataset
    assert out.SOPInstanceUID == uid
    assert out.StudyDate == date_
    assert out.InstitutionName == institution
    assert "PatientAge" not in out and not out.get("PatientSex")
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_private_allow_list_keeps_only_listed_private_attributes() -> None:
    ds = make_instance()
    ds.add_new(0x00091003, "LO", "kept value")
    rule = DeidSettings(private_allow_list=["(0009,xx03) PACSNODE SYNTHETIC"])
    out = deidentifier(rule).deidentify(ds).dataset
    block = out.private_block(0x0009, "PACSNODE SYNTHETIC")
    assert block[0x03].value == "kept value"
    assert 0x00091001 not in out and 0x00091002 not in out  # name and ID: removed
    with pytest.raises(ValueError, match="odd group"):
        DeidSettings(private_allow_list=["(0010,xx03) X"])


# ------------------------------------------------------------------------------- bad input


def _charset_file(name: str) -> Dataset:
    path = next(p for p in get_charset_files() if p.endswith(name))
    ds = dcmread(path)
    # The charset samples are secondary captures ("OT"), which the burned-in list refuses.
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    return ds


@pytest.mark.parametrize(
    ("name", "charset"),
    [
        ("chrH31.dcm", "ISO 2022 IR 87"),  # Japanese, ISO 2022 with escapes
        ("chrFren.dcm", "ISO_IR 100"),
        ("chrX2.dcm", "GB18030"),
    ],
)
def test_other_character_sets_are_deidentified_without_leaks(
    core: Core, name: str, charset: str
) -> None:
    ds = _charset_file(name)
    ds.StudyInstanceUID = ds.SeriesInstanceUID = "1.2.3.4"
    assert charset in str(ds.SpecificCharacterSet)
    original_name = str(ds.PatientName)
    result = core.ingestor.accept(part10(ds), SOURCE)
    assert result.outcome is Outcome.STORED, result.reason
    [stored_file] = blob_files(core.blobs.root)
    stored = dcmread(stored_file)
    assert str(stored.PatientName) == stored.PatientID
    raw = stored_file.read_bytes()
    for group in original_name.split("="):
        if group:
            for encoding in ("utf-8", "gb18030", "iso2022_jp", "latin-1"):
                try:
                    assert group.encode(encoding) not in raw
                except UnicodeEncodeError:
                    continue


def test_gb18030_person_name_with_groups_and_free_text_is_cleaned(core: Core) -> None:
    ds = make_instance(SyntheticSpec(patients=4), patient=3)
    assert ds.SpecificCharacterSet == "GB18030"
    name = str(ds.PatientName)
    ds.PatientComments = f"患者 {name.split('=')[-1]} 复查"
    result = core.ingestor.accept(part10(ds), SOURCE)
    assert result.outcome is Outcome.STORED
    raw = blob_files(core.blobs.root)[0].read_bytes()
    for group in name.split("="):
        assert group.encode("gb18030") not in raw


def test_dates_that_do_not_parse_are_removed_not_kept(core: Core) -> None:
    ds = sample()
    ds.StudyDate = "2024-13-45"
    ds.ContentDate = "yesterday"
    ds.AcquisitionDateTime = "2024"
    core.ingestor.accept(part10(ds), SOURCE)
    stored = dcmread(blob_files(core.blobs.root)[0])
    assert stored.StudyDate == "" and stored.ContentDate == ""
    assert not stored.get("AcquisitionDateTime")


def test_invalid_vr_and_values_are_handled(core: Core) -> None:
    ds = sample()
    ds.add_new(0x00101010, "AS", "not an age at all")  # invalid value for its VR
    ds.add_new(0x00100030, "DA", "19800101")
    name = str(ds.PatientName)
    ds.add_new(0x00100010, "LO", name)  # a name sent with the wrong VR
    ds.add_new(0x00180010, "UN", b"Contrast given to DOE")  # listed attribute sent as UN
    result = core.ingestor.accept(part10(ds), SOURCE)
    assert result.outcome is Outcome.STORED, result.reason
    raw = blob_files(core.blobs.root)[0].read_bytes()
    assert b"19800101" not in raw
    assert name.encode() not in raw


def test_very_long_sequences_are_walked_completely(core: Core) -> None:
    ds = sample()
    items = []
    for number in range(5000):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = f"1.2.3.{number}"
        items.append(item)
    ds.ReferencedImageSequence = Sequence(items)
    result = core.ingestor.accept(part10(ds), SOURCE)
    assert result.outcome is Outcome.STORED
    stored = dcmread(blob_files(core.blobs.root)[0])
    refs = [i.ReferencedSOPInstanceUID for i in stored.ReferencedImageSequence]
    assert len(refs) == 5000 and all(r.startswith("2.25.") for r in refs)
    assert refs[7] == core.pseudonymizer.uid("1.2.3.7")


def test_a_data_set_that_fails_the_profile_is_rejected_and_nothing_is_stored(
    core: Core,
) -> None:
    ds = sample()
    nested = Dataset()
    nested.TextValue = "innermost"
    for _ in range(80):  # parses, but deeper than the profile walks
        outer = Dataset()
        outer.ContentSequence = Sequence([nested])
        nested = outer
    ds.ContentSequence = nested.ContentSequence
    result = core.ingestor.accept(part10(ds), SOURCE)
    assert result.outcome is Outcome.REJECTED_DEID
    assert result.reason == "sequences nested too deeply to de-identify"
    assert blob_files(core.blobs.root) == []
    assert catalog_stats(core.db).instances == 0
    with core.db.read() as session:
        assert session.scalars(select(VaultEntry)).all() == []


# ------------------------------------------------------------------------ burned-in policy


def _with_policy(settings: Settings, policy: str) -> Core:
    return build_core(
        settings.model_copy(update={"deid": DeidSettings(burned_in_policy=policy)})  # type: ignore[arg-type]
    )


def _ultrasound() -> Dataset:
    ds = sample()
    ds.Modality = "US"
    return ds


def test_burned_in_reject_is_the_default(core: Core) -> None:
    annotated = sample()
    annotated.BurnedInAnnotation = "YES"
    for ds, reason in (
        (annotated, "(burned-in annotation)"),
        (_ultrasound(), "(modality on burned-in list)"),
    ):
        result = core.ingestor.accept(part10(ds), SOURCE)
        assert result.outcome is Outcome.REJECTED_DEID
        assert result.reason == f"pixel data may show PHI {reason}"
    assert blob_files(core.blobs.root) == []


def test_burned_in_quarantine_is_stored_but_invisible_until_released(settings: Settings) -> None:
    core = _with_policy(settings, "quarantine")
    try:
        result = core.ingestor.accept(part10(_ultrasound()), SOURCE)
        assert result.outcome is Outcome.STORED
        assert len(blob_files(core.blobs.root)) == 1
        assert catalog_stats(core.db).instances == 0
        again = core.ingestor.accept(part10(_ultrasound()), SOURCE)
        assert again.outcome is Outcome.DUPLICATE
        assert len(blob_files(core.blobs.root)) == 1
        with core.db.read() as session:
            held = session.scalars(select(QuarantinedInstance)).one()
            assert held.sop_instance_uid == result.sop_instance_uid
        assert result.sop_instance_uid is not None
        assert verify(core.db, core.blobs, grace_seconds=0).problems == []  # not debris
        released = core.ingestor.release(result.sop_instance_uid, actor="test reviewer")
        assert released.outcome is Outcome.STORED
        assert catalog_stats(core.db).instances == 1
        with core.db.read() as session:
            assert session.scalars(select(QuarantinedInstance)).all() == []
            assert session.scalars(select(Instance.deid_flag)).one() == (
                "pixel data may show PHI (modality on burned-in list)"
            )
    finally:
        core.close()


def test_burned_in_accept_flagged_is_stored_and_marked(settings: Settings) -> None:
    core = _with_policy(settings, "accept_flagged")
    try:
        assert core.ingestor.accept(part10(_ultrasound()), SOURCE).outcome is Outcome.STORED
        with core.db.read() as session:
            flag = session.scalars(select(Instance.deid_flag)).one()
        assert flag == "pixel data may show PHI (modality on burned-in list)"
    finally:
        core.close()


# ---------------------------------------------------------------------------------- vault


def test_vault_keeps_originals_encrypted_and_audits_every_read(core: Core) -> None:
    ds = sample()
    ds.AccessionNumber = "ACC0042"
    core.ingestor.accept(part10(ds), SOURCE)
    core.ingestor.accept(part10(ds), SOURCE)  # the same pseudonyms again: no new rows
    pseudo = core.pseudonymizer.patient_id(ds.PatientID)
    with core.db.read() as session:
        rows = session.scalars(select(VaultEntry)).all()
        assert {r.kind for r in rows} == {"patient", "study", "series", "accession"}
        assert all(str(ds.PatientName) not in r.token and ds.PatientID not in r.token for r in rows)
    admin = Accessor("test admin", "follow-up of a finding")
    originals = core.vault.reidentify("patient", pseudo, actor=admin)
    assert originals is not None
    assert originals["patient_id"] == ds.PatientID
    assert originals["patient_name"] == str(ds.PatientName)
    study = core.vault.reidentify("study", core.pseudonymizer.uid(ds.StudyInstanceUID), actor=admin)
    assert study is not None and study["study_instance_uid"] == ds.StudyInstanceUID
    assert core.vault.reidentify("patient", "PNOSUCHPATIENT000", actor=admin) is None
    with core.db.read() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.action, e.target.split(":")[0], e.outcome) for e in events] == [
        ("reidentify", "patient", "found"),
        ("reidentify", "study", "found"),
        ("reidentify", "patient", "not_found"),
    ]
    assert events[0].target == f"patient:{pseudo}" and events[0].actor == "test admin"
    assert json.loads(events[0].detail or "{}") == {"reason": "follow-up of a finding"}
