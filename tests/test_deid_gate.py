"""``pacsnode deid check --all`` as a gate: silent (exit 0) on an archive the node
de-identified from pydicom's own test files, loud (exit 1) on a real leak planted in it.

It once reported 483 findings on such an archive, all false: originals that stand for no
value (``ANONYMIZED``, ``^^^^``, ``Anonymous``) matched the node's own dummy values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from deid.check import OriginalIndex
from deid.placeholders import is_placeholder
from deid.vault import VaultRecord
from node.cli import app

runner = CliRunner()
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CHARSET_FILES = Path(pydicom.data.__file__).parent / "charset_files"
# Keep what burned-in rules would refuse: more real headers (ultrasound, secondary capture,
# ECG) reach the archive, and with them more placeholder names.
ENV = {"PACSNODE_DEID__BURNED_IN_POLICY": "accept_flagged"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("deid-gate") / "data"
    imported = runner.invoke(
        app, ["import", str(TEST_FILES), str(CHARSET_FILES), "--data-dir", str(data), "--create"],
        env=ENV,
    )  # fmt: skip
    assert "stored" in imported.stdout, imported.output
    return data


def check(data: Path) -> tuple[int, dict[str, object]]:
    done = runner.invoke(
        app, ["deid", "check", "--all", "--data-dir", str(data), "--json"], env=ENV
    )
    return done.exit_code, json.loads(done.stdout)


def test_an_archive_of_pydicoms_test_files_passes_the_gate(archive: Path) -> None:
    code, report = check(archive)
    assert report["findings"] == [], report["findings"]
    assert code == 0
    assert isinstance(report["checked"], int) and report["checked"] > 100
    assert isinstance(report["originals_searched"], int) and report["originals_searched"] > 50


def test_an_original_name_left_in_a_kept_attribute_fails_the_gate(
    archive: Path, tmp_path: Path
) -> None:
    """ManufacturerModelName is kept by the profile: a name typed into it stays a name."""
    leaky = dcmread(get_testdata_file("MR_small.dcm"))
    leaky.SOPInstanceUID = leaky.file_meta.MediaStorageSOPInstanceUID = (
        "1.2.826.0.1.3680043.8.498.99"
    )
    leaky.ManufacturerModelName = "Peter Doe"  # Doe^Peter is a patient of pydicom's files
    leaky.save_as(tmp_path / "leaky.dcm")
    imported = runner.invoke(
        app, ["import", str(tmp_path / "leaky.dcm"), "--data-dir", str(archive)]
    )
    assert imported.exit_code == 0, imported.output

    code, report = check(archive)
    assert code == 1
    findings = report["findings"]
    assert isinstance(findings, list) and len(findings) == 1
    assert findings[0]["keyword"] == "ManufacturerModelName"
    assert findings[0]["problem"] == "contains an original patient name (vault)"
    assert "Doe" not in json.dumps(report)


@pytest.mark.parametrize(
    "value",
    ["", "  ", "^^^^", "-", "0", "000", "99999", "N/A", "NONE", "UNKNOWN", "ANONYMIZED",
     "Anonymous", "Anonymous^", "ANON^ANON", "Test", "DCM", "19000101", "urn:anonymized"],
)  # fmt: skip
def test_placeholders(value: str) -> None:
    assert is_placeholder(value)


@pytest.mark.parametrize(
    "value",
    ["Doe^Peter", "Test^S R", "CompressedSamples^MR1", "4MR1", "2008-4", "98890234", "03086212",
     "山田^太郎", "김희중", "A1B2", "12", "N/A-7"],
)  # fmt: skip
def test_values_that_are_someone(value: str) -> None:
    assert not is_placeholder(value)


def test_an_original_is_found_as_whole_words_only() -> None:
    index = OriginalIndex(
        [
            VaultRecord("patient", "P1", "P1", {"patient_name": "Doe^Peter", "patient_id": "ANON"}),
            VaultRecord(
                "patient", "P2", "P2", {"patient_name": "山田^太郎", "patient_id": "2008-4"}
            ),
        ]
    )
    assert index.find("seen by Peter Doe") == "an original patient name"
    assert index.find("DOE^PETER") == "an original patient name"
    assert index.find("Peter Doering") is None  # a longer word is another word
    assert index.find("ANONYMIZED") is None and index.find("ANON") is None  # a placeholder
    assert index.find("山田太郎の画像") == "an original patient name"  # no spaces in Japanese
    assert index.find("ID 2008-4") == "an original patient ID"
    assert index.find("2.25.2008-4") is None and index.find("12008-45") is None
