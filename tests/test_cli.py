"""The ``pacsnode`` command line: import, stats, help."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from tests.dicom_bytes import part10, sample

runner = CliRunner()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder with two instances, a zip holding a third (and a nested zip with a fourth),
    and a text file that is not DICOM."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "ct.dcm").write_bytes(part10(sample("CT_small.dcm")))
    (folder / "sub" / "mr.dcm").write_bytes(part10(sample("MR_small.dcm")))
    (folder / "notes.txt").write_text("not an image")
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("rt/plan.dcm", part10(sample("rtplan.dcm")))
    with zipfile.ZipFile(folder / "export.zip", "w") as archive:
        archive.writestr("a/ct2.dcm", part10(_other_ct()))
        archive.write(inner, "nested/inner.zip")
    return folder


def _other_ct():  # type: ignore[no-untyped-def]
    ds = sample("CT_small.dcm")
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    return ds


def test_import_reports_every_outcome_and_fails_when_something_was_rejected(
    inputs: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = runner.invoke(
        app, ["import", str(inputs), "--data-dir", str(data), "--list-rejected", "--create"]
    )
    assert result.exit_code == 1
    assert re.search(r"stored\s+│\s+4\s", result.stdout), result.stdout
    assert re.search(r"rejected_invalid\s+│\s+1\s", result.stdout), result.stdout
    assert "not a DICOM file" in result.stdout
    assert "notes.txt" in result.stdout

    again = runner.invoke(app, ["import", str(inputs / "ct.dcm"), "--data-dir", str(data)])
    assert again.exit_code == 0
    assert "duplicate" in again.stdout

    figures = runner.invoke(app, ["stats", "--data-dir", str(data), "--json"])
    assert figures.exit_code == 0
    assert json.loads(figures.stdout)["instances"] == 4


def test_import_of_a_missing_path_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["import", str(tmp_path / "nope"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no such file or folder" in result.stderr


def test_stats_without_a_catalog_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stats", "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "Error: no catalog" in result.stderr
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("command", ["serve", "import", "stats"])
def test_every_command_explains_itself(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert len(result.stdout.split()) > 20
