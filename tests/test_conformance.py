"""docs/conformance.md stays in step with the code: every route, every matching attribute and
its matching type, every transfer syntax row, every STOW failure reason."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from catalog.query import ATTRIBUTES
from config import load_settings
from dicomweb import STOW_FAILURE_REASON, DicomwebContext, create_routers
from dicomweb.pixels import transfer_syntax_table
from node.app import Core, build_core

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    settings = load_settings(data_dir=tmp_path_factory.mktemp("conformance"), fsync=False)
    core: Core = build_core(settings)
    context = DicomwebContext(core.db, core.blobs, core.ingestor, settings.dicomweb)
    built = FastAPI()
    for prefix, router in create_routers(context):
        built.include_router(router, prefix=prefix)
    yield built
    core.close()


def documented_routes() -> set[str]:
    return set(re.findall(r"^\| `((?:GET|POST) /dicom-web[^`]*)` \|", DOC.read_text(), re.M))


def test_every_route_is_documented_and_every_documented_route_exists(app: FastAPI) -> None:
    routes = {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert routes == documented_routes()


def test_every_matching_attribute_is_documented_with_its_matching() -> None:
    text = DOC.read_text()
    for attribute in ATTRIBUTES:
        row = f"| {attribute.keyword} |"
        assert row in text, attribute.keyword
        line = next(line for line in text.splitlines() if line.startswith(row))
        assert f"| {attribute.vr} | {attribute.level.name} | {attribute.match.value} |" in line


def test_transfer_syntax_table_matches_this_installation() -> None:
    text = DOC.read_text()
    for uid, name, can_read, can_write in transfer_syntax_table():
        yes_no = f"| {'yes' if can_read else 'no'} | {'yes' if can_write else 'no'} |"
        assert f"| {uid} | {name} {yes_no}" in text, uid


def test_every_stow_failure_reason_is_documented() -> None:
    text = DOC.read_text()
    for reason in {r for r in STOW_FAILURE_REASON.values() if r is not None}:
        assert f"0x{int(reason):04X}" in text, reason.name
