"""Every answer of the HTTP door carries the security headers, the Content-Security-Policy
fits the pages the node serves (the OHIF viewer, Swagger UI, the login page: they render in
headless Chromium with no violation, compressed studies decoded by the viewer's WebAssembly
workers included), and CORS is off by default and per origin (DICOMweb only, never with
credentials)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Worker, sync_playwright
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from config import ConfigError, load_settings
from dicomweb import DEFAULT_VIEWER_DIR
from ingest import Source
from node.app import Node
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.dicom_bytes import part10
from tests.query_data import archive
from tests.test_viewer import SEEN_TOUR, _canvas_is_not_blank, _wait_until

pytestmark = pytest.mark.slow
viewer_installed = pytest.mark.skipif(
    not (DEFAULT_VIEWER_DIR / "index.html").is_file(), reason="the OHIF viewer is not installed"
)
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Debian chromium")

# real files of pydicom's wheel: one MR slice uncompressed and in three compressions, each
# decoded by another codec of the viewer (the JPEG 2000 and JPEG-LS ones are WebAssembly)
COMPRESSED = {
    "uncompressed": "MR_small.dcm",
    "JPEG 2000": "MR_small_jp2klossless.dcm",
    "JPEG-LS": "MR_small_jpeg_ls_lossless.dcm",
    "RLE": "MR_small_RLE.dcm",
}
ALLOWED_ORIGIN = "https://viewer.example.org"
OTHER_ORIGIN = "https://elsewhere.example.net"


class ReportCollector:
    """A loopback endpoint for the policy's ``report-uri``: browsers send a report of every
    violation there, those inside workers too (which the page's console does not show)."""

    def __init__(self) -> None:
        self.reports: list[Any] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    collector.reports.append(json.loads(body))
                except ValueError:
                    collector.reports.append(body.decode(errors="replace"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/csp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ReportCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def reports() -> Iterator[ReportCollector]:
    with ReportCollector() as collector:
        yield collector


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, reports: ReportCollector) -> Iterator[Node]:
    """A node with default headers and CORS (no other origin), the query archive, and the
    MR slice in each compression as a study of its own."""
    folder = tmp_path_factory.mktemp("headers")
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            deid={"enabled": False},  # the test opens studies by the UIDs it gave them
            https={"csp_report_uri": reports.url},
        )
    )
    running.start()
    try:
        source = Source(door="folder", remote="test")
        for raw in archive():
            assert running.core.ingestor.accept(raw, source).outcome.success
        for name, file in COMPRESSED.items():
            ds = dcmread(get_testdata_file(file))
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, "instance"])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"CSP-{name}"
            assert running.core.ingestor.accept(part10(ds), source).outcome.success
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


@pytest.fixture(scope="module")
def cors_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node that lets one other origin call DICOMweb."""
    folder = tmp_path_factory.mktemp("cors")
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            dicomweb={"cors_origins": [ALLOWED_ORIGIN + "/"]},  # the slash is forgiven
        )
    )
    running.start()
    try:
        yield f"http://127.0.0.1:{running.http_port}"
    finally:
        running.stop()


def directives(policy: str) -> dict[str, list[str]]:
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


# ------------------------------------------------------------------------- the headers


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/healthz", "application/json"),
        ("/dicom-web/studies", "application/dicom+json"),
        ("/dicom-web/studies/1.2.3/metadata", "application/json"),  # a 404
        ("/login", "text/html"),
        ("/docs", "text/html"),
        ("/openapi.json", "application/json"),
        ("/viewer/", "text/html"),
        ("/viewer/app-config.js", "text/javascript"),
        ("/no/such/page", "application/json"),
    ],
)
def test_every_answer_carries_the_security_headers(base: str, path: str, kind: str) -> None:
    answer = httpx.get(base + path, timeout=30)
    assert answer.headers["content-type"].startswith(kind), answer.headers["content-type"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in answer.headers  # plain HTTP
    policy = directives(answer.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    scripts = policy["script-src"]
    if "javascript" in kind:  # the policy of a worker started from this script
        assert scripts == ["'self'", "'unsafe-eval'", "'wasm-unsafe-eval'"]
    else:  # a page: no eval, no inline script but those allowed one by one
        assert scripts[0] == "'self'"
        assert all(re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", s) for s in scripts[1:])
        assert policy["style-src"] == ["'self'", "'unsafe-inline'"]
        assert policy["img-src"] == ["'self'", "data:"]
        assert policy["form-action"] == ["'self'"]


def test_hsts_only_over_https(base: str) -> None:
    """The scheme is the request's: a trusted proxy (loopback by default) says https."""
    plain = httpx.get(f"{base}/healthz", timeout=10)
    assert "strict-transport-security" not in plain.headers
    proxied = httpx.get(f"{base}/healthz", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert proxied.headers["strict-transport-security"] == "max-age=31536000"


def inline_scripts(html: str) -> list[str]:
    """sha256 CSP sources of a page's inline scripts (by a regex: not the node's parser)."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", html, re.S)
    ]


@viewer_installed
def test_the_policy_allows_the_inline_scripts_of_the_pages_as_served(base: str) -> None:
    policy = httpx.get(f"{base}/healthz", timeout=10).headers["content-security-policy"]
    allowed = directives(policy)["script-src"]
    pages = {path: httpx.get(base + path, timeout=30).text for path in ("/viewer/", "/docs")}
    for path, html in pages.items():
        hashes = inline_scripts(html)
        assert hashes, f"{path} has no inline script (the test would prove nothing)"
        assert set(hashes) <= set(allowed), path
    assert len(allowed) == 1 + sum(len(inline_scripts(html)) for html in pages.values())


# ------------------------------------------------------------------------- CORS


def preflight(base: str, origin: str, path: str = "/dicom-web/studies") -> httpx.Response:
    return httpx.options(
        base + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )


def test_cors_is_off_by_default(base: str) -> None:
    for origin in (ALLOWED_ORIGIN, OTHER_ORIGIN):
        assert "access-control-allow-origin" not in preflight(base, origin).headers
        answer = httpx.get(f"{base}/dicom-web/studies", headers={"Origin": origin}, timeout=10)
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers


def test_cors_answers_an_allowed_origin_without_credentials(cors_base: str) -> None:
    answer = preflight(cors_base, ALLOWED_ORIGIN)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"  # CORS answers too

    got = httpx.get(
        f"{cors_base}/dicom-web/studies", headers={"Origin": ALLOWED_ORIGIN}, timeout=10
    )
    assert got.status_code == 200
    assert got.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in got.headers
    assert "origin" in got.headers["vary"].lower()


def test_cors_refuses_another_origin(cors_base: str) -> None:
    answer = preflight(cors_base, OTHER_ORIGIN)
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers
    got = httpx.get(f"{cors_base}/dicom-web/studies", headers={"Origin": OTHER_ORIGIN}, timeout=10)
    assert "access-control-allow-origin" not in got.headers  # the browser keeps it from the page


@pytest.mark.parametrize("path", ["/api/reports/1", "/api/admin/reidentify/patient/x", "/login"])
def test_cors_stops_at_dicomweb(cors_base: str, path: str) -> None:
    """Reports, administration and the login are for the node's own pages only."""
    assert "access-control-allow-origin" not in preflight(cors_base, ALLOWED_ORIGIN, path).headers
    got = httpx.get(cors_base + path, headers={"Origin": ALLOWED_ORIGIN}, timeout=10)
    assert "access-control-allow-origin" not in got.headers


def test_cors_origins_must_be_origins(tmp_path: Path) -> None:
    for bad in ("viewer.example.org", "https://viewer.example.org/ohif", "ftp://x.org"):
        with pytest.raises(ConfigError, match="cors_origins"):
            load_settings(data_dir=tmp_path, dicomweb={"cors_origins": [bad]})
    settings = load_settings(data_dir=tmp_path, dicomweb={"cors_origins": ["HTTPS://X.org:8443"]})
    assert settings.dicomweb.cors_origins == ["https://x.org:8443"]


# ------------------------------------------------------------------------- in the browser


@dataclass
class Violations:
    """CSP violations a page reports (its ``securitypolicyviolation`` events reach the
    console), console errors of the page and its workers, and page errors."""

    seen: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"page error: {error}"))
        page.on("worker", self._worker)
        return page

    def _worker(self, worker: Worker) -> None:
        worker.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            self.seen.append(f"console: {message.text[:300]} ({message.location['url']})")


REPORT_VIOLATIONS = """document.addEventListener('securitypolicyviolation', (e) =>
  console.error('CSP violation: ' + e.effectiveDirective + ' ' + e.blockedURI));"""


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
        context.add_init_script(REPORT_VIOLATIONS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _settle_reports(page: Page, reports: ReportCollector, seconds: float = 2) -> None:
    """Browsers send violation reports asynchronously: give them a moment."""
    page.wait_for_timeout(seconds * 1000)
    for report in reports.reports:
        body = report.get("csp-report", report) if isinstance(report, dict) else report
        print("CSP report:", body)


@needs_chromium
@viewer_installed
def test_the_viewer_lists_and_opens_studies_without_a_violation(
    base: str, page: Page, reports: ReportCollector
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    reports.reports.clear()
    watch = Violations()
    watch.attach(page)
    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")
    page.get_by_text("CSP-JPEG-LS").first.wait_for(timeout=60_000)
    page.screenshot(path=ARTIFACTS / "csp-study-list.png")
    blank = []
    for name in COMPRESSED:
        study = generate_uid(entropy_srcs=[name, "study"])
        tab = watch.attach(page.context.new_page())
        tab.goto(f"{base}/viewer/viewer?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
        if not _wait_until(lambda tab=tab: _canvas_is_not_blank(tab), 40, tab):
            blank.append(name)
        tab.wait_for_timeout(500)  # errors that follow the first paint
        tab.screenshot(path=ARTIFACTS / f"csp-{name.replace(' ', '-')}.png")
        tab.close()
    _settle_reports(page, reports)
    assert blank == []
    assert watch.seen == []
    assert reports.reports == []


@needs_chromium
def test_the_api_page_and_the_login_page_render_without_a_violation(
    base: str, page: Page, reports: ReportCollector
) -> None:
    reports.reports.clear()
    watch = Violations()
    watch.attach(page)
    page.goto(f"{base}/docs", wait_until="domcontentloaded")
    page.locator(".opblock-summary-path", has_text="/healthz").first.wait_for(timeout=30_000)
    page.goto(f"{base}/login", wait_until="domcontentloaded")  # no method: no form, a note
    page.locator("h1").wait_for(timeout=10_000)
    assert page.locator("h1").inner_text() == "pacsnode"
    # the inline style applies (style-src 'unsafe-inline'): the form is narrow and centred
    assert page.evaluate("getComputedStyle(document.body).maxWidth") != "none"
    _settle_reports(page, reports)
    assert watch.seen == []
    assert reports.reports == []
