"""The dashboard's pages: who may open them, in which language, and that they render in
headless Chromium with no script blocked by the Content-Security-Policy.

One node per module with password logins: an admin (every page) and a viewer (no System
page). Screenshots go to the git-ignored ``artifacts/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page
from pydicom.data import get_testdata_file

from access.credentials import Credentials
from config import load_settings
from dashboard import PAGES
from ingest import Source
from node.app import Node
from tests.browser import ARTIFACTS

REAL_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "waveform_ecg.dcm",
)
"""pydicom's test files: several modalities, makers and kinds of object."""
LOCALES = Path(__file__).resolve().parents[1] / "dashboard" / "locales"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    running = Node(
        load_settings(
            data_dir=tmp_path_factory.mktemp("dashboard") / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={"methods": ["password"]},
        )
    )
    running.start()
    credentials = Credentials(running.core.db, running.settings.access)
    credentials.add_user("admin", PASSWORD, ["admin"], None, actor="test")
    credentials.add_user("reader", PASSWORD, ["viewer"], None, actor="test")
    for name in REAL_FILES:  # real files of other makers, not the synthetic generator's
        data = Path(get_testdata_file(name) or "").read_bytes()
        result = running.core.ingestor.accept(data, Source("folder", "test"))
        assert result.outcome.success, (name, result.reason)
    try:
        yield running
    finally:
        running.stop()


def logged_in(node: Node, user: str) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{node.http_port}", timeout=30)
    answer = client.post("/login", data={"username": user, "password": PASSWORD})
    assert answer.status_code == 303
    return client


def test_both_languages_have_every_string() -> None:
    english = json.loads((LOCALES / "en.json").read_text("utf-8"))
    chinese = json.loads((LOCALES / "zh.json").read_text("utf-8"))
    assert set(english) == set(chinese)
    for page in PAGES:
        assert f"nav.{page.name}" in english


def test_a_visitor_is_sent_to_log_in_and_back(node: Node) -> None:
    for page in PAGES:
        answer = httpx.get(f"http://127.0.0.1:{node.http_port}{page.path}?lang=zh")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=")


def test_a_role_without_the_page_is_told_so_and_gets_no_script(node: Node) -> None:
    reader = logged_in(node, "reader")
    answer = reader.get("/system")
    reader.close()
    assert answer.status_code == 403
    assert "Your role does not include this page." in answer.text
    assert "system.js" not in answer.text
    assert 'href="/system"' not in answer.text  # nor a link to it


def test_the_language_follows_the_switch_then_the_cookie(node: Node) -> None:
    admin = logged_in(node, "admin")
    english = admin.get("/system")
    assert english.status_code == 200 and ">System<" in english.text
    chinese = admin.get("/system", params={"lang": "zh"})
    assert "系统" in chinese.text and 'lang="zh-CN"' in chinese.text
    assert "系统" in admin.get("/system").text  # remembered
    by_browser = httpx.get(
        f"http://127.0.0.1:{node.http_port}/system",
        cookies={"pacsnode_session": admin.cookies["pacsnode_session"]},
        headers={"Accept-Language": "zh-CN,zh;q=0.9"},
    )
    admin.close()
    assert "系统" in by_browser.text


def test_static_files_are_served_and_nothing_else(node: Node) -> None:
    base = f"http://127.0.0.1:{node.http_port}/dashboard/static"
    assert httpx.get(f"{base}/common.js").status_code == 200
    echarts = httpx.get(f"{base}/echarts.min.js")
    assert echarts.status_code == 200 and len(echarts.content) > 500_000
    for name in ("..%2Fpages.py", ".hidden", "missing.js"):
        assert httpx.get(f"{base}/{name}").status_code == 404


def open_logged_in(
    browser: Browser, node: Node, path: str, user: str = "admin"
) -> tuple[Page, list[str]]:
    """A new browser profile logged in as ``user`` at ``path``; the console errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    base = f"http://127.0.0.1:{node.http_port}"
    page.goto(f"{base}{path}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{path}")
    return page, errors


def test_the_system_page_renders_the_health_checks(browser: Browser, node: Node) -> None:
    page, errors = open_logged_in(browser, node, "/system")
    page.wait_for_selector("[data-check=status]")
    assert page.inner_text("[data-check=status] .value") == "ok"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-system.png")
    page.context.close()
    assert errors == []


@pytest.mark.parametrize(("user", "language"), [("admin", "en"), ("admin", "zh"), ("reader", "en")])
def test_every_page_renders_on_real_files_without_an_error(
    browser: Browser, node: Node, user: str, language: str
) -> None:
    """Each page the user's role has, over pydicom's files: no script error (no call the
    role would be refused), no error shown, every chart drawn."""
    reader = {page.name for page in PAGES if page.permission.value == "dicomweb.read"}
    for shown in PAGES:
        if user == "reader" and shown.name not in reader:
            continue
        page, errors = open_logged_in(browser, node, f"{shown.path}?lang={language}", user)
        page.wait_for_load_state("networkidle")
        shown_errors = page.locator(".error:visible")
        assert shown_errors.count() == 0, (shown.name, shown_errors.all_inner_texts())
        for canvas in page.locator("canvas").all():
            assert canvas.evaluate(
                "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " return d.some((v, i) => i % 4 === 3 && v > 0); }"
            ), shown.name
        page.screenshot(path=ARTIFACTS / f"dashboard-real-{shown.name}-{user}-{language}.png")
        page.context.close()
        assert errors == [], (shown.name, errors)
