"""``pacsnode send``, ``orthanc pull`` and ``jobs list``: help, and the errors that need no
peer (the commands' work with real peers is in test_orthanc.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [["send"], ["orthanc", "pull"], ["jobs", "list"]])
def test_every_command_explains_itself(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert len(result.stdout.split()) > 20


def test_send_needs_studies_or_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PACSNODE_QR__DESTINATIONS", '[{"ae_title": "WS1", "host": "127.0.0.1", "port": 104}]'
    )
    neither = runner.invoke(app, ["send", "--to", "WS1", "--data-dir", str(tmp_path)])
    assert neither.exit_code == 1
    assert "Error: give either studies (--study, --studies-from) or series" in neither.stderr
    both = runner.invoke(
        app,
        ["send", "--to", "WS1", "--study", "1.2", "--series", "1.3", "--data-dir", str(tmp_path)],
    )
    assert both.exit_code == 1
    missing = runner.invoke(
        app,
        ["send", "--to", "WS1", "--studies-from", str(tmp_path / "no.txt"), "--data-dir", "x"],
    )
    assert missing.exit_code == 1
    assert "Error: cannot read" in missing.stderr
    no_catalog = runner.invoke(
        app, ["send", "--to", "WS1", "--study", "1.2", "--data-dir", str(tmp_path / "empty")]
    )
    assert no_catalog.exit_code == 1
    assert "Error: no catalog at" in no_catalog.stderr


def test_jobs_list_of_a_fresh_catalog_and_of_none(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert runner.invoke(app, ["stats", "--data-dir", str(data)]).exit_code == 1
    missing = runner.invoke(app, ["jobs", "list", "--data-dir", str(data)])
    assert missing.exit_code == 1
    assert "Error: no catalog at" in missing.stderr
    from config import load_settings
    from node.app import build_core

    build_core(load_settings(data_dir=data)).close()
    empty = runner.invoke(app, ["jobs", "list", "--data-dir", str(data)])
    assert empty.exit_code == 0
    assert "no scheduled jobs" in empty.stdout
    as_json = runner.invoke(app, ["jobs", "list", "--data-dir", str(data), "--json"])
    assert as_json.stdout.strip() == "[]"
