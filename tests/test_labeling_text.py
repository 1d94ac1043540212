"""De-identification of report text, HL7 ORU parsing and ACKs, and CSV/XLSX export reading.

These parts need no catalog; storing what they produce is tested in test_labeling_intake.py.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from openpyxl import Workbook

from config.labeling import LabelingSettings
from labeling.files import read_exports
from labeling.oru import MessageError, ack, decode, parse_oru, read_header
from labeling.textdeid import Identifiers, deidentify_text

# ------------------------------------------------------------------ text de-identification

IDS = Identifiers(
    patient_ids=("MRN884213",),
    names=("Zhang^Wei", "张伟"),
    accession_numbers=("CT2024031500123",),
    birth_date=date(1961, 7, 4),
)


def test_the_message_identifiers_are_removed_wherever_they_appear() -> None:
    text = (
        "患者张伟，检查号CT2024031500123，ID MRN884213。Patient Zhang Wei, Wei Zhang. "
        "DOB 1961-07-04. 胰腺未见异常。"
    )
    clean = deidentify_text(text, IDS, -100)
    for value in ("张伟", "CT2024031500123", "MRN884213", "Zhang", "Wei", "1961-07-04"):
        assert value not in clean
    assert "胰腺未见异常" in clean
    assert "[BIRTH DATE]" in clean


@pytest.mark.parametrize(
    "text",
    [
        "联系电话：13912345678",
        "电话 0571-87654321",
        "Call (555) 123-4567.",
        "身份证号：330102198001011234",
        "id 33010219800101123X done",
        "住院号：ZY00012345",
        "病历号 A-99812",
        "MRN: 4455667",
        "Accession number: RAD-77812",
        "报告医师：李明",
        "Reported by: John Carter",
        "e-mail j.carter@example.org",
        "Reference 1234567890123.",
    ],
)
def test_identifier_patterns_are_removed(text: str) -> None:
    clean = deidentify_text(text, Identifiers(), 10)
    digits = [c for c in clean if c.isdigit()]
    assert len(digits) < 4, clean
    assert "李明" not in clean and "Carter" not in clean and "@" not in clean


@pytest.mark.parametrize(
    ("text", "shifted"),
    [
        ("2024-03-05", "2024-02-24"),
        ("2024/03/05", "2024/02/24"),
        ("2024.03.05", "2024.02.24"),
        ("2024年3月5日", "2024年2月24日"),
        ("20240305", "20240224"),
        ("03/05/2024", "02/24/2024"),
    ],
)
def test_dates_are_shifted_by_the_patient_offset_in_their_own_format(
    text: str, shifted: str
) -> None:
    assert deidentify_text(f"对比 {text} 片", Identifiers(), -10) == f"对比 {shifted} 片"


def test_measurements_and_categories_are_kept() -> None:
    text = "右肺上叶结节约1.2×0.9cm，Lung-RADS 4A；BI-RADS 3; T2N1M0; 3.5 mm."
    assert deidentify_text(text, IDS, 30) == text


# ------------------------------------------------------------------ HL7 ORU^R01

ORU = (
    "MSH|^~\\&|RIS|HOSP|PACSNODE|LAB|20240305120000||ORU^R01|MSG0001|P|2.5|||||CHN|UNICODE UTF-8\r"
    "PID|1|ALT77|MRN884213^^^HOSP^MR~99887^^^INS||Zhang^Wei~张^伟||19610704|M\r"
    "OBR|1|PL1|CT2024031500123^RIS|CT^CT abdomen|||20240305101500|||||||||||||||||CT\r"
    "OBX|1|FT|FIND^Findings||胰头区见一约3.2cm低密度肿块，胰管扩张。\\.br\\肝脏未见异常。~患者张伟。||||||F\r"
    "OBX|2|TX|IMP^Impression||胰头占位，考虑胰腺癌 \\T\\ 胆管扩张。||||||F\r"
    "OBX|3|NM|SIZE^Size||32|mm|||||F\r"
)


def test_an_oru_message_becomes_one_report() -> None:
    block = ORU.encode("utf-8")
    report = parse_oru(decode(block, read_header(block)))
    assert report.patient_id == "MRN884213"
    assert report.accession_number == "CT2024031500123"
    assert report.exam_date == date(2024, 3, 5)
    assert report.birth_date == date(1961, 7, 4)
    assert report.modality == "CT"
    assert report.report_type == "radiology"
    assert report.findings == "胰头区见一约3.2cm低密度肿块，胰管扩张。\n肝脏未见异常。\n患者张伟。"
    assert report.impression == "胰头占位，考虑胰腺癌 & 胆管扩张。"
    assert "Zhang^Wei" in report.patient_names and "张^伟" in report.patient_names
    assert "ALT77" in report.other_identifiers


def test_a_pathology_service_makes_a_pathology_report() -> None:
    text = ORU.replace("|||||||||||||||||CT\r", "|||||||||||||||||SP\r")
    assert parse_oru(text).report_type == "pathology"


@pytest.mark.parametrize(
    ("block", "code", "reason"),
    [
        (b"hello world", "AR", "does not start with MSH"),
        (ORU.replace("UNICODE UTF-8", "KLINGON-8").encode(), "AR", "unknown character set"),
        (ORU.encode("gb18030"), "AR", "not valid utf-8"),
        (ORU.replace("ORU^R01", "ADT^A01").encode(), "AR", "only ORU^R01"),
        (ORU.replace("MRN884213^^^HOSP^MR~99887^^^INS", "").encode(), "AE", "PID-3"),
        (ORU.split("OBX|1")[0].encode(), "AE", "no report text"),
        ("\r".join(s for s in ORU.split("\r") if not s.startswith("PID")).encode(), "AE", "no PID"),
    ],
)
def test_bad_messages_say_why(block: bytes, code: str, reason: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_oru(decode(block, read_header(block)))
    assert caught.value.code == code
    assert reason in caught.value.reason


def test_gb18030_messages_are_read_when_msh18_says_so() -> None:
    block = ORU.replace("UNICODE UTF-8", "GB 18030-2000").encode("gb18030")
    assert "胰腺癌" in parse_oru(decode(block, read_header(block))).impression


def test_acks_carry_the_code_the_control_id_and_an_escaped_reason() -> None:
    header = read_header(ORU.encode())
    segments = ack(header, "AE", "PID-3 | missing ^ here", "101").split("\r")
    assert segments[0].startswith("MSH|^~\\&|PACSNODE|PACSNODE|RIS|HOSP|")
    assert "|ACK^R01^ACK|" in segments[0]
    assert segments[1] == "MSA|AE|MSG0001|PID-3 \\F\\ missing \\S\\ here"
    assert segments[2].startswith("ERR|||101^^HL70357|E|")
    assert ack(header, "AA").split("\r")[1] == "MSA|AA|MSG0001|"


# ------------------------------------------------------------------ CSV / XLSX exports

HEADER = "accession,patient_id,patient_name,exam_date,report_type,modality,findings,impression\n"


def _csv(path: Path, rows: str, encoding: str = "utf-8") -> Path:
    path.write_bytes((HEADER + rows).encode(encoding))
    return path


def test_csv_exports_are_merged_and_duplicates_dropped(tmp_path: Path) -> None:
    first = _csv(
        tmp_path / "a.csv",
        "A1,P1,张三,2024-03-05,影像,CT,胰头肿块。,胰腺癌。\n"
        "A2,P2,李四,2024/03/06,病理,,,（左乳）纤维腺瘤。\n",
    )
    second = _csv(tmp_path / "b.csv", "A1,P1,张三,2024-03-05,radiology,CT,胰头肿块。,  胰腺癌。\n")
    read, refused = read_exports([first, second], LabelingSettings())
    assert refused == []
    assert read.duplicates == 1
    reports = [row.report for row in read.rows]
    assert [r.report_type for r in reports if r] == ["radiology", "pathology"]
    assert reports[1] is not None and reports[1].exam_date == date(2024, 3, 6)


def test_a_csv_with_misnamed_columns_names_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("acc,pid,text\nA1,P1,x\n", encoding="utf-8")
    read, refused = read_exports([path], LabelingSettings())
    assert read.rows == []
    assert len(refused) == 1
    assert "bad.csv: missing column(s) for patient ID (one of: patient_id" in refused[0]
    assert "report text" in refused[0] and "the file has: acc, pid, text" in refused[0]


def test_a_csv_in_an_unknown_encoding_is_refused_and_gb18030_can_be_allowed(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "gbk.csv", "A1,P1,张三,2024-03-05,影像,CT,胰头肿块。,胰腺癌。\n", "gb18030"
    )
    read, refused = read_exports([path], LabelingSettings())
    assert read.rows == [] and "unknown encoding" in refused[0] and "gb18030" in refused[0]
    read, refused = read_exports([path], LabelingSettings(file_encodings=["utf-8", "gb18030"]))
    assert refused == [] and read.rows[0].report is not None
    assert read.rows[0].report.impression == "胰腺癌。"


def test_bad_rows_are_refused_alone(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "rows.csv",
        "A1,P1,,2024-03-05,影像,CT,,\n"
        "A2,P2,,not a date,影像,CT,胰头肿块。,\n"
        "A3,P3,,2024-03-05,cardiology,CT,胰头肿块。,\n"
        "A4,P4,,2024-03-05,,CT,胰头肿块。,\n",
    )
    read, refused = read_exports([path], LabelingSettings())
    assert refused == []
    assert [(row.where, row.error) for row in read.rows if row.report is None] == [
        ("rows.csv row 2", "empty report (no findings and no impression)"),
        ("rows.csv row 3", "exam date is not a date (use YYYY-MM-DD)"),
        ("rows.csv row 4", "report type must be radiology or pathology (or 影像, 病理)"),
    ]
    assert read.rows[-1].report is not None and read.rows[-1].report.report_type == "radiology"


def test_xlsx_merged_cells_take_the_merged_value(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["检查号", "病人ID", "检查日期", "报告类型", "检查所见", "诊断意见"])
    sheet.append(["A1", "P1", date(2024, 3, 5), "影像", "胰头肿块", "胰腺癌"])
    sheet.append(["A2", None, date(2024, 3, 9), "病理", "", "胰腺导管腺癌"])
    sheet.append(["A3", "P2", "2024-04-01", "影像", "双肺清晰", "未见结节"])
    sheet.merge_cells("B2:B3")  # one patient, two reports
    path = tmp_path / "export.xlsx"
    book.save(path)
    read, refused = read_exports([path], LabelingSettings())
    assert refused == []
    assert read.merged_ranges == 1
    reports = [row.report for row in read.rows]
    assert [r.patient_id for r in reports if r] == ["P1", "P1", "P2"]
    assert reports[1] is not None and reports[1].exam_date == date(2024, 3, 9)


def test_xlsx_with_merged_header_cells_is_refused(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["patient_id", "findings", None])
    sheet.append(["P1", "a", "b"])
    sheet.merge_cells("B1:C1")
    path = tmp_path / "merged.xlsx"
    book.save(path)
    read, refused = read_exports([path], LabelingSettings())
    assert read.rows == [] and "merged header cells" in refused[0]


def test_files_that_are_not_exports_are_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.pdf"
    notes.write_bytes(b"%PDF-1.4")
    fake = tmp_path / "fake.xlsx"
    fake.write_bytes(b"not a zip")
    read, refused = read_exports([notes, fake, tmp_path / "missing.csv"], LabelingSettings())
    assert read.rows == []
    assert "not a CSV or XLSX" in refused[0]
    assert "not a readable XLSX" in refused[1]
    assert "no such file" in refused[2]
