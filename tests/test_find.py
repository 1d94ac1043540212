"""C-FIND against a running node: pynetdicom and dcmtk findscu, Patient Root and Study Root,
every level, the matching rules, character sets, cancel and every refusal.

The node runs with de-identification off so that the synthetic patients' names (in ASCII,
Latin-1, UTF-8 and GB18030) and identifiers are what the catalog holds, and with
``qr.max_find_results = 1500`` so that the response limit can be reached (the archive holds
2,000 small instances).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import create_engine, text

from tests.peers import HOST, NodeProcess, dcmtk, free_ports, pacsnode_process
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

pytestmark = pytest.mark.slow

STUDY_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
LIMIT = 1500
SPEC = SyntheticSpec(patients=4, ct_slices=300, mr_slices=100, rows=16, columns=16)


@dataclass(frozen=True)
class StudyRow:
    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    modalities: str
    instances: int


@dataclass(frozen=True)
class Archive:
    node: NodeProcess
    dataset: SyntheticDataset
    studies: list[StudyRow]
    series_of: dict[str, list[tuple[str, str]]]  # study UID -> [(series UID, modality)]
    log: Path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("find")
    dataset = generate(root / "synthetic", SPEC)
    data_dir = root / "data"
    env = {
        "PACSNODE_DEID__ENABLED": "false",
        "PACSNODE_QR__MAX_FIND_RESULTS": str(LIMIT),
        "PACSNODE_FSYNC": "0",
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "import",
            str(root / "synthetic"),
            "--data-dir",
            str(data_dir),
            "--create",
        ],
        check=True,
        capture_output=True,
        env={**__import__("os").environ, **env},
    )
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        studies = [
            StudyRow(*row)
            for row in connection.execute(
                text(
                    "SELECT p.patient_id, p.patient_name, s.study_instance_uid, s.study_date, "
                    "s.modalities_in_study, s.number_of_instances "
                    "FROM study s JOIN patient p ON s.patient_pk = p.id ORDER BY s.id"
                )
            )
        ]
        series_of: dict[str, list[tuple[str, str]]] = {}
        for study_uid, series_uid, modality in connection.execute(
            text(
                "SELECT st.study_instance_uid, se.series_instance_uid, se.modality "
                "FROM series se JOIN study st ON se.study_pk = st.id ORDER BY se.id"
            )
        ):
            series_of.setdefault(study_uid, []).append((series_uid, modality))
    engine.dispose()
    dicom_port, http_port = free_ports(2)
    log = root / "node.log"
    with pacsnode_process(
        data_dir, dicom_port=dicom_port, http_port=http_port, env=env, log_path=log
    ) as node:
        yield Archive(node, dataset, studies, series_of, log)


def find(
    archive: Archive, model: str, *, charset: str | None = None, **keys: object
) -> tuple[list[Dataset], Dataset]:
    """One C-FIND on a fresh association: the matches and the final status."""
    identifier = Dataset()
    if charset:
        identifier.SpecificCharacterSet = charset
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    assoc = ae.associate(HOST, archive.node.dicom_port, ae_title=archive.node.ae_title)
    assert assoc.is_established
    matches, final = [], Dataset()
    for status, answer in assoc.send_c_find(identifier, model):
        if int(status.Status) in (0xFF00, 0xFF01):
            matches.append(answer)
        else:
            final = status
    assoc.release()
    return matches, final


STUDY_KEYS = {
    "PatientName": "",
    "PatientID": "",
    "StudyDate": "",
    "StudyInstanceUID": "",
    "ModalitiesInStudy": "",
    "NumberOfStudyRelatedInstances": "",
}


# ------------------------------------------------------------------- levels and return keys


def test_study_level_answers_every_study_with_the_keys_asked_for(archive: Archive) -> None:
    matches, final = find(archive, STUDY_FIND, QueryRetrieveLevel="STUDY", **STUDY_KEYS)
    assert int(final.Status) == 0x0000
    assert sorted(str(m.StudyInstanceUID) for m in matches) == sorted(
        s.study_uid for s in archive.studies
    )
    expected_keys = {*STUDY_KEYS, "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
    for match in matches:
        assert {element.keyword for element in match} == expected_keys
        assert match.QueryRetrieveLevel == "STUDY"
        assert match.RetrieveAETitle == archive.node.ae_title
        row = next(s for s in archive.studies if s.study_uid == match.StudyInstanceUID)
        assert int(match.NumberOfStudyRelatedInstances) == row.instances
        assert match.StudyDate == row.study_date
        modalities = match.ModalitiesInStudy
        listed = [modalities] if isinstance(modalities, str) else list(modalities)
        assert listed == row.modalities.split("\\")


def test_patient_root_patient_then_study_level(archive: Archive) -> None:
    patients, final = find(
        archive, PATIENT_FIND, QueryRetrieveLevel="PATIENT", PatientID="", PatientName=""
    )
    assert int(final.Status) == 0x0000
    assert sorted(str(p.PatientID) for p in patients) == sorted(
        {s.patient_id for s in archive.studies}
    )
    patient = str(patients[0].PatientID)
    studies, _ = find(
        archive, PATIENT_FIND, QueryRetrieveLevel="STUDY", PatientID=patient, StudyInstanceUID=""
    )
    assert sorted(str(s.StudyInstanceUID) for s in studies) == sorted(
        s.study_uid for s in archive.studies if s.patient_id == patient
    )


def test_series_and_image_levels_within_a_study(archive: Archive) -> None:
    study = next(s for s in archive.studies if s.modalities == "MR")
    series, final = find(
        archive,
        STUDY_FIND,
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=study.study_uid,
        SeriesInstanceUID="",
        Modality="",
        SeriesNumber="",
    )
    assert int(final.Status) == 0x0000
    assert [(str(s.SeriesInstanceUID), s.Modality) for s in series] == archive.series_of[
        study.study_uid
    ]
    first_series = str(series[0].SeriesInstanceUID)
    images, final = find(
        archive,
        STUDY_FIND,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=study.study_uid,
        SeriesInstanceUID=first_series,
        SOPInstanceUID="",
        InstanceNumber="",
    )
    assert int(final.Status) == 0x0000
    assert [int(i.InstanceNumber) for i in images] == list(range(1, len(images) + 1))
    assert len(images) == SPEC.mr_slices


# --------------------------------------------------------------------------- matching rules


def _expect(archive: Archive, predicate: object) -> list[str]:
    return sorted(s.study_uid for s in archive.studies if predicate(s))  # type: ignore[operator]


def test_single_value_wildcard_range_uid_list_and_universal_matching(archive: Archive) -> None:
    some = archive.studies[0]
    cases = [
        ({"PatientID": some.patient_id}, lambda s: s.patient_id == some.patient_id),
        ({"PatientName": "DOE*"}, lambda s: fnmatchcase(s.patient_name, "DOE*")),
        ({"PatientName": "*jürgen"}, lambda s: s.patient_name.lower().endswith("jürgen")),
        (
            {"PatientID": some.patient_id[:-1] + "?"},
            lambda s: s.patient_id[:-1] == some.patient_id[:-1],
        ),
        (
            {"StudyDate": f"{some.study_date}-"},
            lambda s: s.study_date >= some.study_date,
        ),
        (
            {"StudyDate": f"-{some.study_date}"},
            lambda s: s.study_date <= some.study_date,
        ),
        (
            {"StudyInstanceUID": [archive.studies[1].study_uid, archive.studies[2].study_uid]},
            lambda s: s in archive.studies[1:3],
        ),
        ({"ModalitiesInStudy": "MR"}, lambda s: "MR" in s.modalities.split("\\")),
        ({"PatientName": "", "StudyDate": ""}, lambda s: True),
    ]
    for keys, predicate in cases:
        asked = {"StudyInstanceUID": "", **keys}
        matches, final = find(archive, STUDY_FIND, QueryRetrieveLevel="STUDY", **asked)
        assert int(final.Status) == 0x0000, keys
        expected = _expect(archive, predicate)
        assert expected, keys  # every case matches something
        assert sorted(str(m.StudyInstanceUID) for m in matches) == expected, keys


# ---------------------------------------------------------------------------- character sets


def test_answers_are_utf8_whatever_the_stored_character_set(archive: Archive) -> None:
    for phi in archive.dataset.patients:
        matches, _ = find(
            archive,
            PATIENT_FIND,
            QueryRetrieveLevel="PATIENT",
            PatientID=phi.patient_id,
            PatientName="",
        )
        assert len(matches) == 1, phi.specific_character_set
        assert matches[0].SpecificCharacterSet == "ISO_IR 192"
        assert str(matches[0].PatientName) == phi.patient_name


def test_a_query_in_latin1_matches_the_stored_name(archive: Archive) -> None:
    latin = next(p for p in archive.dataset.patients if p.specific_character_set == "ISO_IR 100")
    family = latin.patient_name.split("^")[0]
    matches, final = find(
        archive,
        PATIENT_FIND,
        charset="ISO_IR 100",
        QueryRetrieveLevel="PATIENT",
        PatientName=f"{family}*",
        PatientID="",
    )
    assert int(final.Status) == 0x0000
    assert [str(m.PatientID) for m in matches] == [latin.patient_id]
    assert str(matches[0].PatientName) == latin.patient_name


def test_dcmtk_findscu_reads_the_answers(archive: Archive, tmp_path: Path) -> None:
    gb = next(p for p in archive.dataset.patients if p.specific_character_set == "GB18030")
    result = subprocess.run(
        [
            dcmtk("findscu"),
            "-P",
            "-aec",
            archive.node.ae_title,
            "-X",
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"PatientID={gb.patient_id}",
            "-k",
            "PatientName",
            "-k",
            "StudyInstanceUID",
            "-k",
            "StudyDate",
            HOST,
            str(archive.node.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stderr
    answers = [dcmread(f) for f in sorted(tmp_path.glob("rsp*.dcm"))]
    assert sorted(str(a.StudyInstanceUID) for a in answers) == sorted(gb.study_uids)
    assert {str(a.PatientName) for a in answers} == {gb.patient_name}
    assert {a.SpecificCharacterSet for a in answers} == {"ISO_IR 192"}


# ------------------------------------------------------------------------------ cancel, limit


def test_cancel_stops_the_answers(archive: Archive) -> None:
    """C-CANCEL after the first of 1,200 answers: the answer ends with 0xFE00 before the
    last match (sending them all takes far longer than the cancel takes to arrive)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SOPClassUID = CTImageStorage
    identifier.SOPInstanceUID = ""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(STUDY_FIND)
    assoc = ae.associate(HOST, archive.node.dicom_port, ae_title=archive.node.ae_title)
    context_id = assoc._get_valid_context(STUDY_FIND, "", "scu").context_id
    statuses = []
    for status, _ in assoc.send_c_find(identifier, STUDY_FIND, msg_id=9):
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            assoc.send_c_cancel(9, context_id)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) - 1 < SPEC.ct_slices * SPEC.patients


def test_more_matches_than_the_limit_are_refused_with_a700(archive: Archive) -> None:
    matches, final = find(archive, STUDY_FIND, QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
    assert matches == []
    assert int(final.Status) == 0xA700
    assert final.ErrorComment == f"more than {LIMIT} matches; narrow the query"
    assert f"refused (0xA700): more than {LIMIT} matches" in archive.log.read_text()


# ----------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("model", "keys", "status", "comment"),
    [
        (STUDY_FIND, {"PatientID": ""}, 0xA900, "QueryRetrieveLevel must be"),
        (STUDY_FIND, {"QueryRetrieveLevel": "FRAME"}, 0xA900, "QueryRetrieveLevel must be"),
        (STUDY_FIND, {"QueryRetrieveLevel": "PATIENT"}, 0xA900, "needs the Patient Root model"),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "STUDY", "SeriesInstanceUID": "1.2.3"},
            0xA900,
            "SeriesInstanceUID is below the STUDY level",
        ),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "STUDY", "NumberOfStudyRelatedInstances": "3"},
            0xC000,
            "matching on NumberOfStudyRelatedInstances is not supported",
        ),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "STUDY", "StudyDate": "last week"},
            0xC000,
            "StudyDate: not a date",
        ),
        (
            STUDY_FIND,
            {"QueryRetrieveLevel": "STUDY", "OtherPatientIDs": "X1"},
            0xC000,
            "matching on OtherPatientIDs is not supported",
        ),
    ],
)
def test_unsupported_levels_and_keys_are_refused(
    archive: Archive, model: str, keys: dict[str, str], status: int, comment: str
) -> None:
    matches, final = find(archive, model, **keys)
    assert matches == []
    assert int(final.Status) == status
    assert comment in final.ErrorComment
    assert f"refused (0x{status:04X}): {final.ErrorComment}" in archive.log.read_text()


def test_sequence_matching_is_refused_and_empty_sequences_are_returned(archive: Archive) -> None:
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    matches, final = find(
        archive,
        STUDY_FIND,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID="",
        ReferencedStudySequence=[item],
    )
    assert int(final.Status) == 0xC000
    assert "matching on ReferencedStudySequence is not supported" in final.ErrorComment
    matches, final = find(
        archive,
        STUDY_FIND,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID="",
        ReferencedStudySequence=[],
    )
    assert int(final.Status) == 0x0000
    assert len(matches) == len(archive.studies)
    assert all("ReferencedStudySequence" in m for m in matches)


def test_the_log_never_quotes_a_query_value(archive: Archive) -> None:
    secret = "NOT-IN-THE-LOG-4711"
    find(archive, STUDY_FIND, QueryRetrieveLevel="STUDY", PatientID=secret)
    find(archive, STUDY_FIND, QueryRetrieveLevel="STUDY", StudyDate=secret)
    assert secret not in archive.log.read_text()
