"""The node's own pages on a node without the viewer: the missing viewer is named with how to
install it, never with the node's folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import load_settings
from node.app import Node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pages")


@pytest.fixture(scope="module")
def base(folder: Path) -> Iterator[str]:
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            dicomweb={"viewer_dir": folder / "no-viewer"},
        )
    )
    running.start()
    try:
        yield f"http://127.0.0.1:{running.http_port}"
    finally:
        running.stop()


@pytest.mark.parametrize("path", ["/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3"])
def test_a_missing_viewer_says_how_to_install_it_without_naming_folders(
    base: str, folder: Path, path: str
) -> None:
    answer = httpx.get(base + path, timeout=10)
    assert answer.status_code == 404
    assert answer.json() == {"detail": "the OHIF viewer is not installed: run scripts/setup.sh"}
    assert str(folder) not in answer.text


def test_a_nul_in_a_viewer_path_is_a_bad_request(base: str) -> None:
    answer = httpx.get(f"{base}/viewer/%00", timeout=10)
    assert answer.status_code == 400
    assert "NUL" in answer.json()["detail"]
