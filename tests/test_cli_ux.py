"""The ``pacsnode`` command line as a new user meets it: help texts printed whole, a fast
start, ``--version``, the archive each command works on (never a new one by accident), and
what ``serve`` says when a port is taken."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from node.cli import app
from tests.peers import HOST, REPO_ROOT, free_port, pacsnode_process

runner = CliRunner()

HEAVY = ("pydicom", "pynetdicom", "fastapi", "pandas", "numpy", "alembic", "uvicorn", "PIL")
"""Modules a command that only prints help or counts must not load (each costs 0.1-0.6 s)."""


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


COMMANDS = list(_commands(typer.main.get_command(app), []))


def _imported(
    *args: str, cwd: Path = REPO_ROOT
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m node ARGS``; the process and the modules it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "node", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", done.stderr, re.M))
    return done, modules


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


# ------------------------------------------------------------------------------ help texts


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "-" for p, _ in COMMANDS]
)
def test_every_help_text_is_printed_whole(path: list[str], command: Any) -> None:
    """Text in square brackets (``[labeling.columns]``, ``[env: ...]``) was taken for rich
    markup and dropped; every command, group and option must also explain itself."""
    assert (command.help or "").strip(), f"{path} has no help"
    result = runner.invoke(app, [*path, "--help"], terminal_width=500, max_content_width=500)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    texts = [command.help, *(getattr(p, "help", None) for p in command.params)]
    for param in command.params:
        if param.name != "help":
            assert getattr(param, "help", None), f"{path} {param.name} has no help"
    for text in filter(None, texts):
        for bracketed in re.findall(r"\[[^\]]*\]", text):
            assert " ".join(bracketed.split()) in shown, f"{path}: {bracketed} not shown"


def test_reports_import_help_names_the_config_section() -> None:
    result = runner.invoke(app, ["reports", "import", "--help"])
    assert "[labeling.columns]" in " ".join(result.stdout.split())


# ------------------------------------------------------------------------------ start-up


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pacsnode {version('pacsnode')}"


def test_help_loads_no_heavy_module() -> None:
    done, modules = _imported("--help")
    assert done.returncode == 0 and "serve" in done.stdout
    assert "node.cli" in modules
    assert not _heavy(modules), sorted(_heavy(modules))


def test_stats_loads_only_the_catalog(tmp_path: Path) -> None:
    data = tmp_path / "data"
    imported = runner.invoke(
        app, ["import", get_testdata_file("CT_small.dcm"), "--data-dir", str(data), "--create"]
    )
    assert imported.exit_code == 0, imported.output
    done, modules = _imported("stats", "--data-dir", str(data), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"instances": 1' in done.stdout
    assert "catalog.stats" in modules and "sqlalchemy" in modules
    assert not _heavy(modules), sorted(_heavy(modules))


def test_the_catalog_package_still_exports_every_name() -> None:
    import catalog

    for name in catalog.__all__:
        assert getattr(catalog, name) is not None


# ------------------------------------------------------------------------------ the archive


WRITERS = [
    ["import", "{file}"],
    ["reports", "import", "{csv}"],
    ["verify"],
    ["stats"],
    ["cohort", "define", "all"],
    ["labels", "reextract"],
    ["labels", "review"],
    ["deid", "check", "--all"],
    ["deid", "quarantine", "release", "2.25.1"],
    ["reidentify", "patient", "PAAAAAAAAAAAAAAAA", "--reason", "test"],
    ["jobs", "list"],
]


@pytest.mark.parametrize("command", WRITERS, ids=[" ".join(c[:2]) for c in WRITERS])
def test_no_command_but_serve_starts_an_archive_unasked(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --data-dir a command once made ./pacsnode-data with new secrets and wrote
    there: now it says which archive it looked for and stops."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACSNODE_DATA_DIR", raising=False)
    csv = tmp_path / "ris.csv"
    csv.write_text("accession,report\nA1,no findings\n")
    args = [a.format(file=get_testdata_file("CT_small.dcm"), csv=csv) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    error = " ".join(result.stderr.split())
    assert f"no catalog at {tmp_path / 'pacsnode-data' / 'catalog.sqlite'}" in error
    assert "--data-dir" in error and "--create" in error
    assert not (tmp_path / "pacsnode-data").exists()


def test_create_starts_an_archive_and_every_command_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACSNODE_DATA_DIR", raising=False)
    ct = get_testdata_file("CT_small.dcm")
    first = runner.invoke(app, ["import", ct, "--create"])
    assert first.exit_code == 0, first.output
    archive = tmp_path / "pacsnode-data"
    assert first.stderr.splitlines()[0] == f"archive: {archive} (new)"
    assert (archive / "secrets" / "hmac.key").is_file()
    key = (archive / "secrets" / "hmac.key").read_bytes()

    again = runner.invoke(app, ["import", ct, "--create"])  # --create on an archive: used as is
    assert again.exit_code == 0 and "duplicate" in again.stdout
    assert again.stderr.splitlines()[0] == f"archive: {archive}"
    assert (archive / "secrets" / "hmac.key").read_bytes() == key
    counted = runner.invoke(app, ["stats", "--json"])
    assert counted.exit_code == 0 and '"instances": 1' in counted.stdout
    assert [line for line in counted.stderr.splitlines() if "archive" in line] == [
        f"archive: {archive}"
    ]


def test_a_catalog_without_its_secrets_is_not_given_new_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ct = get_testdata_file("CT_small.dcm")
    assert runner.invoke(app, ["import", ct, "--data-dir", str(data), "--create"]).exit_code == 0
    secrets = data / "secrets"
    secrets.rename(tmp_path / "elsewhere")
    result = runner.invoke(app, ["import", ct, "--data-dir", str(data)])
    assert result.exit_code == 1
    assert f"no secrets at {secrets}" in " ".join(result.stderr.split())
    assert not secrets.exists()


# ------------------------------------------------------------------------------ serve


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(
    ("listener", "port_option", "env", "host_option"),
    [
        ("DICOM", "--dicom-port", "PACSNODE_DICOM_PORT", "--dicom-host"),
        ("HTTP", "--http-port", "PACSNODE_HTTP_PORT", "--http-host"),
        ("MLLP (HL7 v2)", "--mllp-port", "PACSNODE_LABELING__MLLP_PORT", "--mllp-host"),
    ],
)
def test_a_taken_port_names_the_listener_the_address_and_how_to_move_it(
    listener: str, port_option: str, env: str, host_option: str, taken_port: int, tmp_path: Path
) -> None:
    ports = {"--dicom-port": "0", "--http-port": "0", "--mllp-port": "0"}
    ports[port_option] = str(taken_port)
    result = runner.invoke(
        app,
        [
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--dicom-host",
            HOST,
            "--mllp-host",
            HOST,
            *(item for pair in ports.items() for item in pair),
        ],
    )
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert f"the {listener} listener cannot listen on {HOST}:{taken_port}" in error
    assert "already in use" in error
    assert f"{port_option} or {env}" in error and host_option in error
    assert "Errno" not in error


def test_serve_takes_the_dicom_host_and_the_mllp_address_as_options(tmp_path: Path) -> None:
    dicom_port, http_port, mllp_port = free_port(), free_port(), free_port()
    with pacsnode_process(
        tmp_path / "data",
        dicom_port=dicom_port,
        http_port=http_port,
        extra_args=["--dicom-host", HOST, "--mllp-host", HOST, "--mllp-port", str(mllp_port)],
        env={"PACSNODE_DICOM_HOST": "0.0.0.0", "PACSNODE_LABELING__MLLP_PORT": "0"},
    ) as node:
        with socket.create_connection((HOST, mllp_port), timeout=5):
            pass
        log = node.log_path.read_text()
        assert f"MLLP (HL7 v2) listening on {HOST}:{mllp_port}" in log
        assert f"listening on {HOST}:{dicom_port}" in log
