"""The node's own pages on a node without the viewer: ``/`` sends people to the API pages,
``/docs`` renders in a browser without internet (Swagger UI is served by the node), and the
missing viewer is named with how to install it, never with the node's folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Route, sync_playwright

from api.app import SWAGGER_UI_DIR
from config import load_settings
from node.app import Node
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

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


def test_root_is_the_dashboards_overview_even_without_a_viewer(base: str) -> None:
    answer = httpx.get(f"{base}/", timeout=10)
    assert answer.status_code == 200
    assert "/dashboard/static/overview.js" in answer.text


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


@pytest.mark.skipif(
    not (SWAGGER_UI_DIR / "swagger-ui-bundle.js").is_file(),
    reason="Swagger UI is not installed (scripts/setup.sh fetches it)",
)
@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Debian chromium")
def test_the_api_pages_render_without_internet(base: str, tmp_path: Path) -> None:
    outside: list[str] = []

    def offline(route: Route) -> None:  # as on a hospital network without internet
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            context.route("**/*", offline)
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"{base}/docs", wait_until="domcontentloaded")
            operations = page.locator(".opblock-summary-path")
            operations.first.wait_for(timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "api-docs.png")
            paths = operations.all_inner_texts()
        finally:
            context.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert outside == []
    assert len(paths) > 20
    assert any("/dicom-web/studies" in path for path in paths)
