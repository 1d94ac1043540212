"""The bundled OHIF viewer end to end in headless Chromium, over real files: every pydicom test
file the node accepts (studies without Modality, PatientName, StudyDate or accession number,
ACR-NEMA dates such as ``1997.04.24``, structured reports, RT objects) plus the synthetic set.
The study list shows every study of the QIDO answer, and each kind of study opens without an
error. Screenshots go to ``artifacts/`` (git-ignored) for CI."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, Response, sync_playwright
from pydicom.data import get_testdata_files

from config import load_settings
from dicomweb import DEFAULT_VIEWER_DIR
from dicomweb.viewer import PATCHES
from ingest import Source
from node.app import Node
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.query_data import archive, synthetic

# OHIF's first-visit tour covers the viewport; a user who saw it once has this in storage
SEEN_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"

installed = pytest.mark.skipif(
    not (DEFAULT_VIEWER_DIR / "index.html").is_file(),
    reason="the OHIF viewer is not installed (scripts/setup.sh fetches it)",
)
pytestmark = [pytest.mark.slow, installed]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Debian chromium")

Json = dict[str, Any]


def test_each_fix_of_ohif_applies_to_the_installed_bundle_once() -> None:
    """A newer OHIF must not drop a fix silently: each patched text is found exactly once."""
    bundles = [path.read_text(errors="replace") for path in DEFAULT_VIEWER_DIR.glob("*.js")]
    for old, new in PATCHES:
        assert sum(bundle.count(old) for bundle in bundles) == 1, old
        assert old not in new


# ------------------------------------------------------------------------- the node


def pydicom_files() -> list[Path]:
    """pydicom's test files present on disk (its wheel ships them), in a stable order."""
    return sorted(path for path in map(Path, get_testdata_files()) if path.is_file())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("viewer")
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            deid={"enabled": False},  # what the files lack stays missing
        )
    )
    running.start()
    source = Source(door="folder", remote="test")
    for raw in archive():
        assert running.core.ingestor.accept(raw, source).outcome.success
    accepted = sum(
        running.core.ingestor.accept(path.read_bytes(), source).outcome.success
        for path in pydicom_files()
    )
    assert accepted > 100  # the files that are not DICOM instances are refused
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


@pytest.fixture(scope="module")
def studies(base: str) -> list[Json]:
    """The QIDO answer (every study), as OHIF gets it."""
    answer = httpx.get(f"{base}/dicom-web/studies", params={"limit": 1000}, timeout=30)
    answer.raise_for_status()
    rows: list[Json] = answer.json()
    assert 30 < len(rows) < 101  # one page of OHIF's list (it asks for at most 101)
    return rows


def uid(study: Json) -> str:
    return str(study["0020000D"]["Value"][0])


def lacks(study: Json, tag: str) -> bool:
    """The attribute is absent or empty (PS3.18 F.2: no ``Value``)."""
    return "Value" not in study.get(tag, {})


@pytest.fixture(scope="module")
def metadata(base: str, studies: list[Json]) -> dict[str, list[Json]]:
    with httpx.Client(base_url=f"{base}/dicom-web", timeout=30) as client:
        return {
            uid(study): client.get(f"/studies/{uid(study)}/metadata").json() for study in studies
        }


def test_qido_keeps_empty_attributes_standard(studies: list[Json]) -> None:
    """The fix is in the viewer, not in the answer: an empty attribute has no ``Value``."""
    no_modality = [study for study in studies if lacks(study, "00080061")]
    assert no_modality
    for study in no_modality:
        assert study["00080061"] == {"vr": "CS"}


# ------------------------------------------------------------------------- HTTP


def test_root_is_the_overview_with_a_link_to_the_viewer(base: str) -> None:
    answer = httpx.get(f"{base}/", timeout=10)
    assert answer.status_code == 200
    assert 'href="/viewer/"' in answer.text


@pytest.mark.parametrize(
    ("path", "status"),
    [("/viewer/%00", 400), ("/viewer/a%00b.js", 400), ("/viewer/" + "a" * 5000, 200)],
)
def test_bad_viewer_paths_are_not_server_errors(base: str, path: str, status: int) -> None:
    answer = httpx.get(base + path, timeout=10)
    assert answer.status_code == status
    if status == 400:
        assert "NUL" in answer.json()["detail"]
    else:  # a route of the single-page app: its page
        assert "<html" in answer.text


# ------------------------------------------------------------------------- the browser


@dataclass
class Watch:
    """What went wrong in a page: failed DICOMweb requests, script errors, errors logged."""

    problems: list[str] = field(default_factory=list)
    dicomweb: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)
        return page

    def _response(self, response: Response) -> None:
        if "/dicom-web/" in response.url:
            self.dicomweb.append(response.url)
            if response.status >= 400:
                self.problems.append(f"{response.status} {response.url}")

    def _failed(self, request: Request) -> None:
        if "/dicom-web/" in request.url:
            self.problems.append(f"failed {request.url} {request.failure}")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text[:300]}")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.add_init_script(SEEN_TOUR)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)


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


def _wait_until(condition: Callable[[], bool], seconds: float, page: Page) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(250)
    return True


def _listed(page: Page) -> list[str]:
    rows = page.locator('[data-cy^="studyRow-"]')
    return [
        str(rows.nth(i).get_attribute("data-cy")).removeprefix("studyRow-")
        for i in range(rows.count())
    ]


@needs_chromium
def test_the_study_list_shows_every_study_and_opens_one_without_modality(
    base: str, studies: list[Json], page: Page
) -> None:
    watch = Watch()
    watch.attach(page)
    ARTIFACTS.mkdir(exist_ok=True)
    expected = sorted(uid(study) for study in studies)

    page.goto(f"{base}/viewer/?resultsPerPage=100", wait_until="domcontentloaded")
    _wait_until(
        lambda: len(_listed(page)) >= len(expected) or "Error" in page.inner_text("body"),
        60,
        page,
    )
    page.set_viewport_size({"width": 1280, "height": 260 + 42 * len(expected)})  # every row
    page.screenshot(path=ARTIFACTS / "ohif-study-list.png")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert "Data Source Connection Error" not in page.inner_text("body"), watch.problems
    assert sorted(_listed(page)) == expected
    page.get_by_text("Ångström, Åsa").first.wait_for(timeout=10_000)  # Latin-1 name
    assert any("/dicom-web/studies?" in url for url in watch.dicomweb)

    page.reload(wait_until="domcontentloaded")  # the study list route survives a reload
    page.locator('[data-cy^="studyRow-"]').first.wait_for(timeout=60_000)

    # the row of a study whose series carry no Modality opens in the Basic Viewer
    blank = next(uid(study) for study in studies if lacks(study, "00080061"))
    page.locator(f'[data-cy="studyRow-{blank}"]').click()
    button = page.locator(f'[data-cy="mode-viewer-{blank}"]')
    button.wait_for(timeout=10_000)
    page.screenshot(path=ARTIFACTS / "ohif-study-list-expanded.png")
    assert button.is_enabled()
    button.click()
    page.wait_for_url(f"**/viewer/viewer?*StudyInstanceUIDs={blank}*", timeout=10_000)
    assert _wait_until(lambda: _canvas_is_not_blank(page), 30, page), "blank viewport"
    page.screenshot(path=ARTIFACTS / "ohif-viewer-no-modality.png")
    assert watch.problems == []


# ------------------------------------------------------------------------- each kind opens


def _has_images(instances: list[Json]) -> bool:
    return all("7FE00010" in instance or "7FE00008" in instance for instance in instances)


def _unnamed_content_item(item: Json) -> bool:
    """An SR content item without a Concept Name Code Sequence, at any depth."""
    children = item.get("0040A730", {}).get("Value", [])
    return any("0040A043" not in child or _unnamed_content_item(child) for child in children)


def _acr_nema_date(instances: list[Json]) -> bool:
    return any("." in str(i.get("00080020", {}).get("Value", [""])[0]) for i in instances)


SYNTHETIC_MR = {ds.StudyInstanceUID for ds in synthetic() if ds.Modality == "MR"}

# what real files lack or carry that the viewer must survive, each tried on one study
KINDS: dict[str, Callable[[Json, list[Json]], bool]] = {
    "no ModalitiesInStudy": lambda study, _: lacks(study, "00080061"),
    "no PatientName": lambda study, _: lacks(study, "00100010"),
    "no PatientID": lambda study, _: lacks(study, "00100020"),
    "no StudyDate": lambda study, _: lacks(study, "00080020"),
    "no StudyTime": lambda study, _: lacks(study, "00080030"),
    "no AccessionNumber": lambda study, _: lacks(study, "00080050"),
    "no StudyDescription": lambda study, _: lacks(study, "00081030"),
    "ACR-NEMA date": lambda _, instances: _acr_nema_date(instances),
    "SR item without concept name": lambda _, instances: any(map(_unnamed_content_item, instances)),
    "synthetic MR": lambda study, _: uid(study) in SYNTHETIC_MR,
}


def representatives(studies: list[Json], metadata: dict[str, list[Json]]) -> dict[str, list[str]]:
    """Few studies that together show every kind: study UID -> its kinds. Only studies whose
    instances all have pixel data (or are SR documents) are candidates, smallest first."""
    candidates = sorted(
        (
            study
            for study in studies
            if _has_images(metadata[uid(study)])
            or any(map(_unnamed_content_item, metadata[uid(study)]))
        ),
        key=lambda study: len(metadata[uid(study)]),
    )
    chosen: dict[str, list[str]] = {}
    for kind, test in KINDS.items():
        if any(kind in kinds for kinds in chosen.values()):
            continue
        study = next(s for s in candidates if test(s, metadata[uid(s)]))
        chosen[uid(study)] = [k for k, t in KINDS.items() if t(study, metadata[uid(study)])]
    return chosen


@needs_chromium
def test_each_kind_of_study_opens_without_an_error(
    base: str, studies: list[Json], metadata: dict[str, list[Json]], page: Page
) -> None:
    chosen = representatives(studies, metadata)
    assert len(chosen) >= 4
    ARTIFACTS.mkdir(exist_ok=True)
    problems: dict[str, list[str]] = {}
    for number, (study, kinds) in enumerate(chosen.items()):
        watch = Watch()
        tab = watch.attach(page.context.new_page())
        tab.goto(f"{base}/viewer/viewer?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
        thumbnails = tab.locator('[data-cy^="study-browser-thumbnail"]')
        if not _wait_until(lambda t=thumbnails: t.count() > 0, 30, tab):
            watch.problems.append("the study browser shows no series")
        elif _has_images(metadata[study]):
            if not _wait_until(lambda tab=tab: _canvas_is_not_blank(tab), 20, tab):
                watch.problems.append("the viewport stayed blank")
        else:  # a structured report: its text in the viewport
            viewport = tab.locator('[data-cy="viewport-pane"]')
            if not _wait_until(
                lambda v=viewport: "".join(v.all_inner_texts()).strip() != "", 10, tab
            ):
                watch.problems.append("the report viewport stayed empty")
        tab.wait_for_timeout(500)  # errors that follow the first paint
        tab.screenshot(path=ARTIFACTS / f"ohif-kind-{number}.png")
        asked = any("/frames/" in url or "/rendered" in url for url in watch.dicomweb)
        if _has_images(metadata[study]) and not asked:
            watch.problems.append("no pixels were asked for")
        if watch.problems:
            problems[f"{', '.join(kinds)} ({study})"] = watch.problems
        tab.close()
    assert problems == {}
