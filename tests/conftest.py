"""Shared fixtures: catalog databases (SQLite and PostgreSQL), a core, a running node."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from config import DeidSettings, Settings, load_settings
from node.app import Core, build_core
from tests.browser import CHROMIUM, CHROMIUM_ARGS

POSTGRES_ADMIN_URL = os.environ.get(
    "PACSNODE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = (
    os.environ.get("CI") == "true" or os.environ.get("PACSNODE_TEST_REQUIRE_POSTGRES") == "1"
)

# Nodes started by tests (in this process or as children) listen for HL7 on any free
# loopback port: many run at once, and the default 2575 may be taken on the machine.
os.environ.setdefault("PACSNODE_LABELING__MLLP_PORT", "0")
os.environ.setdefault("PACSNODE_LABELING__MLLP_HOST", "127.0.0.1")
# ... and in one process (workers = 1), unless a test is about the DICOM worker processes:
# starting a worker per core costs each node seconds.
os.environ.setdefault("PACSNODE_WORKERS", "1")


def _postgres_version() -> str | None:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
        engine.dispose()
        return str(version)
    except Exception:
        return None


def pytest_report_header() -> list[str]:
    return [
        f"sqlite {sqlite3.sqlite_version}, postgresql {_postgres_version() or 'not reachable'}",
        f"pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}",
    ]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    if _postgres_version() is None:
        message = f"PostgreSQL not reachable at {make_url(POSTGRES_ADMIN_URL).host}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (PACSNODE_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    return POSTGRES_ADMIN_URL


@contextmanager
def new_postgres_database(admin_url: str) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped on exit."""
    name = f"pacsnode_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    with new_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty catalog database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(tmp_path: Path, catalog_url: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data", database_url=catalog_url, fsync=False, dicom_port=0
    )


@pytest.fixture
def core(settings: Settings) -> Iterator[Core]:
    """Catalog, blob store and ingest pipeline (de-identifying) on a temporary data folder."""
    built = build_core(settings)
    yield built
    built.close()


@pytest.fixture
def plain_core(settings: Settings) -> Iterator[Core]:
    """The same with de-identification off (``deid.enabled = false``): stored as received."""
    built = build_core(settings.model_copy(update={"deid": DeidSettings(enabled=False)}))
    yield built
    built.close()


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills up (needs root, as CI has)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(autouse=True)
def _no_handler_on_a_closed_stream() -> Iterator[None]:
    """A command run in process (typer's CliRunner) points the root logger at its captured
    stderr, closed once the command returns: every later log line of the session would print
    a "Logging error" traceback (slow, and noise around the failures that matter)."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        stream = getattr(handler, "stream", None)
        if stream is not None and getattr(stream, "closed", False):
            root.removeHandler(handler)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (tests/browser.py), one per module."""
    with sync_playwright() as playwright:
        running = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield running
        finally:
            running.close()
