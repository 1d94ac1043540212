"""The bundled OHIF viewer end to end in headless Chromium: the study list shows the archive,
a study renders non-blank pixels, and no DICOMweb request fails. Screenshots go to
``artifacts/`` (git-ignored) for CI."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, Response, sync_playwright

from catalog.query import QueryLevel, parse_query, run_query
from config import load_settings
from dicomweb import DEFAULT_VIEWER_DIR
from ingest import Source
from node.app import Node
from tests.query_data import archive

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEFAULT_VIEWER_DIR / "index.html").is_file(),
        reason="the OHIF viewer is not installed (scripts/setup.sh fetches it)",
    ),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Debian chromium"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("viewer")
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            deid={"enabled": False},
        )
    )
    running.start()
    source = Source(door="folder", remote="test")
    for raw in archive():
        assert running.core.ingestor.accept(raw, source).outcome.success
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield browser.pages[0] if browser.pages else browser.new_page()
        finally:
            browser.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _patient_ids(node: Node) -> list[str]:
    rows = run_query(node.core.db, parse_query(QueryLevel.STUDY, {})).rows
    return sorted({row["00100020"]["Value"][0] for row in rows})


def _canvas_is_not_blank(page: Page) -> bool:
    return bool(
        page.evaluate(
            """() => {
              for (const canvas of document.querySelectorAll('canvas')) {
                if (canvas.width < 32 || canvas.height < 32) continue;
                const copy = document.createElement('canvas');
                copy.width = canvas.width; copy.height = canvas.height;
                const context = copy.getContext('2d');
                context.drawImage(canvas, 0, 0);
                const data = context.getImageData(0, 0, copy.width, copy.height).data;
                const seen = new Set();
                for (let i = 0; i < data.length; i += 4 * 7) {
                  seen.add(data[i] + 256 * data[i + 1] + 65536 * data[i + 2]);
                  if (seen.size > 8) return true;
                }
              }
              return false;
            }"""
        )
    )


def test_ohif_lists_the_studies_and_renders_one(node: Node, page: Page) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    failures: list[str] = []
    dicomweb_requests: list[str] = []

    def on_response(response: Response) -> None:
        if "/dicom-web/" in response.url:
            dicomweb_requests.append(response.url)
            if response.status >= 400:
                failures.append(f"{response.status} {response.url}")

    def on_failed(request: Request) -> None:
        if "/dicom-web/" in request.url:
            failures.append(f"failed {request.url} {request.failure}")

    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")
    patient_ids = _patient_ids(node)
    page.get_by_text(patient_ids[0]).first.wait_for(timeout=60_000)
    for patient_id in patient_ids:
        page.get_by_text(patient_id).first.wait_for(timeout=10_000)
    page.get_by_text("Ångström, Åsa").first.wait_for(timeout=10_000)  # Latin-1 name
    page.screenshot(path=ARTIFACTS / "ohif-study-list.png", full_page=True)
    assert any("/dicom-web/studies?" in url for url in dicomweb_requests)

    page.reload(wait_until="domcontentloaded")  # the study list route survives a reload
    page.get_by_text(patient_ids[-1]).first.wait_for(timeout=60_000)

    mr = parse_query(QueryLevel.STUDY, {"ModalitiesInStudy": "MR"})
    uid = run_query(node.core.db, mr).rows[0]["0020000D"]["Value"][0]
    page = page.context.new_page()  # a fresh tab, as a user opening a study link
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    page.goto(f"{base}/viewer/viewer?StudyInstanceUIDs={uid}", wait_until="domcontentloaded")
    for _ in range(90):
        if _canvas_is_not_blank(page):
            break
        page.wait_for_timeout(1000)
    page.screenshot(path=ARTIFACTS / "ohif-viewer.png")
    assert _canvas_is_not_blank(page), "the viewport canvas stayed blank"
    assert any("/frames/" in url or "/rendered" in url for url in dicomweb_requests)
    assert failures == []
