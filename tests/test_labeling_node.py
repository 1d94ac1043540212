"""Reports against a running node: HL7 over MLLP with python-hl7's own client and a raw
socket, REST with httpx, images over C-STORE with pynetdicom, labels read back over HTTP;
and ``pacsnode reports import`` on CSV and XLSX exports.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest
from hl7.client import MLLPClient
from openpyxl import Workbook
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import create_engine, select

from catalog.models import Report
from config import load_settings
from deid import load_pseudonymizer
from tests.dicom_bytes import sample
from tests.peers import HOST, NodeProcess, free_port, pacsnode_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, int]]:
    data_dir = tmp_path_factory.mktemp("labels-node") / "data"
    mllp_port = free_port()
    env = {"PACSNODE_LABELING__MLLP_PORT": str(mllp_port), "PACSNODE_LABELING__MLLP_HOST": HOST}
    with pacsnode_process(
        data_dir, dicom_port=free_port(), http_port=free_port(), env=env
    ) as running:
        yield running, mllp_port


def oru(control: str, patient: str, accession: str, impression: str, service: str = "CT") -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|RIS|HOSP|PACSNODE|LAB|20240305120000||ORU^R01|{control}|P|2.5"
            "|||||CHN|UNICODE UTF-8",
            f"PID|1||{patient}^^^HOSP^MR||Li^Na~李^娜||19700101|F",
            f"OBR|1||{accession}^RIS|CT^CT|||20240305101500|||||||||||||||||{service}",
            "OBX|1|FT|FIND^Findings||患者李娜，胰腺形态正常。\\.br\\肝脏未见异常。||||||F",
            f"OBX|2|TX|IMP^Impression||{impression}||||||F",
        ]
    )


def msa(answer: bytes) -> list[str]:
    text = answer.decode("utf-8").strip("\x0b\x1c\r")
    [segment] = [s for s in text.split("\r") if s.startswith("MSA")]
    return segment.split("|")


def c_store(node: NodeProcess, patient: str, accession: str, study_date: str) -> str:
    ds = sample("CT_small.dcm")
    ds.PatientID, ds.AccessionNumber, ds.StudyDate = patient, accession, study_date
    ds.PatientName = "Li^Na"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    return str(ds.StudyInstanceUID)


def stored_uid(node: NodeProcess, original_study_uid: str) -> str:
    """The de-identified Study Instance UID the node keeps for an original one (computed
    with the node's own key, read from its data folder)."""
    settings = load_settings(data_dir=node.log_path.parent / "data")
    return load_pseudonymizer(settings, create=False).uid(original_study_uid)


def labels_of(node: NodeProcess, study_uid: str) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.get(f"{node.url}/api/studies/{stored_uid(node, study_uid)}/labels")
        if (answer.status_code == 200 and answer.json()["labels"]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    return {label["task"]: label["value"] for label in answer.json()["labels"]}


# ------------------------------------------------------------------ MLLP


def test_mllp_report_then_images_links_and_labels(node: tuple[NodeProcess, int]) -> None:
    process, port = node
    with MLLPClient(HOST, port) as client:
        answer = client.send_message(oru("C1", "PAT-1", "ACC-1", "胰头占位，考虑胰腺癌。"))
    assert msa(answer)[:3] == ["MSA", "AA", "C1"]
    study = c_store(process, "PAT-1", "ACC-1", "20240305")
    labels = labels_of(process, study)
    assert labels["pancreatic_cancer"] == 2
    assert labels["liver_cancer"] == 0
    assert labels["breast_cancer"] == -1


def test_mllp_images_then_pathology_report(node: tuple[NodeProcess, int]) -> None:
    process, port = node
    study = c_store(process, "PAT-2", "ACC-2", "20240301")
    with MLLPClient(HOST, port) as client:
        answer = client.send_message(
            oru("C2", "PAT-2", "ACC-2", "（胰头）中分化导管腺癌。", service="SP")
        )
    assert msa(answer)[1] == "AA"
    assert labels_of(process, study)["pancreatic_cancer"] == 1


def test_mllp_bad_messages_get_ar_or_ae_and_the_listener_keeps_running(
    node: tuple[NodeProcess, int],
) -> None:
    _, port = node
    with MLLPClient(HOST, port) as client:
        garbage = msa(client.send_message("this is not HL7"))
        assert garbage[1] == "AR" and "does not start with MSH" in garbage[3]
        adt = msa(client.send_message(oru("C3", "P", "A", "x").replace("ORU^R01", "ADT^A08")))
        assert adt[1:3] == ["AR", "C3"] and r"only ORU\S\R01" in adt[3]  # ^ escaped
        empty = oru("C4", "P", "A", "").split("\r")
        answer = msa(client.send_message("\r".join(s for s in empty if not s.startswith("OBX"))))
        assert answer[1:3] == ["AE", "C4"] and "no report text" in answer[3]
        wrong_charset = oru("C5", "P", "A", "胰腺癌").encode("gb18030")
        answer = msa(client.send_message(wrong_charset))
        assert answer[1] == "AR" and "not valid utf-8" in answer[3]
        # same connection, a good message: still answered
        good = msa(client.send_message(oru("C6", "PAT-6", "ACC-6", "No pancreatic mass.")))
        assert good[1:3] == ["AA", "C6"]
    with socket.create_connection((HOST, port), timeout=10) as raw:
        raw.sendall(b"no start block\x1c\r")
        assert msa(raw.recv(4096))[1] == "AR"
        raw.sendall(b"\x0b" + oru("C7", "PAT-7", "ACC-7", "Liver cyst.").encode() + b"\x1c\r")
        assert msa(raw.recv(4096))[1:3] == ["AA", "C7"]


# ------------------------------------------------------------------ REST


def test_rest_report_and_review(node: tuple[NodeProcess, int]) -> None:
    process, _ = node
    study = c_store(process, "PAT-8", "ACC-8", "20240305")
    body = {
        "report_type": "radiology",
        "patient_id": "PAT-8",
        "accession_number": "ACC-8",
        "patient_name": "Li^Na",
        "exam_date": "2024-03-05",
        "modality": "CT",
        "impression": "Impression: hypoenhancing liver lesion, suspicious for metastasis.",
    }
    created = httpx.post(f"{process.url}/api/reports", json=body, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()["labels"]["liver_cancer"] == 2
    [link] = created.json()["links"]
    assert link["method"] == "accession" and link["confidence"] == 1.0
    again = httpx.post(f"{process.url}/api/reports", json=body, timeout=10)
    assert again.status_code == 200 and again.json()["duplicate"]

    stored = httpx.get(f"{process.url}/api/reports/{created.json()['report_id']}").json()
    assert "PAT-8" not in json.dumps(stored) and "ACC-8" not in json.dumps(stored)

    answer = httpx.get(f"{process.url}/api/studies/{stored_uid(process, study)}/labels").json()
    [liver] = [label for label in answer["labels"] if label["task"] == "liver_cancer"]
    assert liver["value"] == 2 and "suspicious" in liver["rule"]
    assert liver["evidence"] == "metastasis"
    review = httpx.put(
        f"{process.url}/api/labels/{liver['id']}",
        json={"reviewer": "Dr. Chen", "value": 1, "note": "biopsy"},
    )
    assert review.status_code == 200, review.text
    assert review.json()["value"] == 1 and review.json()["extracted_value"] == 2
    assert review.json()["reviewed_by"] == "Dr. Chen" and review.json()["reviewed_at"]
    assert labels_of(process, study)["liver_cancer"] == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"patient_id": "PAT-9", "impression": "   "}, 422, "empty report"),
        ({"impression": "Liver cyst."}, 422, "patient_id: Field required"),
        (
            {"patient_id": "SECRET-ID", "report_type": "cardio", "impression": "x"},
            422,
            "report_type",
        ),
        (
            {"patient_id": "SECRET-ID", "exam_date": "yesterday", "impression": "x"},
            422,
            "exam_date",
        ),
    ],
)
def test_rest_bad_reports(
    node: tuple[NodeProcess, int], body: dict[str, str], status: int, message: str
) -> None:
    process, _ = node
    answer = httpx.post(f"{process.url}/api/reports", json=body, timeout=10)
    assert answer.status_code == status
    assert message in answer.json()["detail"]
    assert "SECRET-ID" not in answer.text and "yesterday" not in answer.text


def test_rest_unknown_study_and_label(node: tuple[NodeProcess, int]) -> None:
    process, _ = node
    assert httpx.get(f"{process.url}/api/studies/1.2.3/labels").status_code == 404
    answer = httpx.put(f"{process.url}/api/labels/999999", json={"reviewer": "x", "value": 1})
    assert answer.status_code == 404
    answer = httpx.put(f"{process.url}/api/labels/1", json={"reviewer": "x", "value": 7})
    assert answer.status_code == 422


# ------------------------------------------------------------------ file import (CLI)


def test_reports_import_csv_and_xlsx(tmp_path: Path) -> None:
    csv = tmp_path / "ris.csv"
    csv.write_text(
        "检查号,病人ID,姓名,检查日期,报告类型,检查所见,诊断意见\n"
        "A1,P1,王芳,2024-03-05,影像,胰头肿块。,考虑胰腺癌。\n"
        "A2,P2,赵强,2024-03-06,影像,,\n",
        encoding="utf-8",
    )
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["accession", "patient_id", "exam_date", "report_type", "findings", "impression"])
    sheet.append(
        ["A1", "P1", date(2024, 3, 5), "影像", "胰头肿块。", "考虑胰腺癌。"]
    )  # also in the CSV
    sheet.append(["A3", None, date(2024, 3, 9), "病理", None, "（胰头）导管腺癌。"])
    sheet.merge_cells("B2:B3")
    xlsx = tmp_path / "pathology.xlsx"
    book.save(xlsx)
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "node", "reports", "import", str(csv), str(xlsx),
         "--data-dir", str(data_dir), "--create"],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 1  # one row refused (empty report)
    assert "ris.csv row 3: empty report" in done.stdout
    assert "merged cell ranges filled" in done.stdout
    assert re.search(r"duplicates across the files\s*│\s*1", done.stdout)
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        rows = connection.execute(select(Report.report_type, Report.impression)).all()
    engine.dispose()
    assert sorted(rows) == [("pathology", "（胰头）导管腺癌。"), ("radiology", "考虑胰腺癌。")]

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,text\n1,x\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "node", "reports", "import", str(wrong), "--data-dir",
         str(data_dir)],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 1
    assert "Error:" in done.stderr and "missing column(s)" in done.stderr.replace("\n", "")


def test_rest_body_not_in_utf8_is_refused(node: tuple[NodeProcess, int]) -> None:
    process, _ = node
    body = '{"patient_id": "P", "impression": "胰腺癌"}'.encode("gb18030")
    answer = httpx.post(
        f"{process.url}/api/reports",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code in (400, 422)
    assert httpx.get(f"{process.url}/healthz").status_code == 200
