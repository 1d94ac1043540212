"""The bundled viewer behind each way of logging in, in headless Chromium: a password, the
hospital's OpenID Connect provider (the tests' own, :mod:`tests.oidc_issuer`), and API tokens
alone (no login for people). Screenshots go to ``artifacts/`` (git-ignored)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page

from access.credentials import Credentials
from api.security import SESSION_COOKIE
from config import load_settings
from ingest import Source
from node.app import Node
from tests.browser import ARTIFACTS
from tests.dicom_bytes import part10
from tests.oidc_issuer import TestIssuer
from tests.query_data import synthetic
from tests.test_viewer import (
    SEEN_TOUR,
    Watch,
    _listed,
    _wait_until,
    installed,
    needs_chromium,
)

pytestmark = [pytest.mark.slow, installed, needs_chromium]

USER, PASSWORD = "alice", "correct horse battery"
CLIENT_ID = "pacsnode-viewer-login"
STUDY_UID = "0020000D"


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as running:
        running.user = {"sub": "radiologist-7", "roles": ["viewer"], "groups": ["lung"]}
        running.prompt = True  # a sign-in page: the way back starts on the provider's site
        yield running


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer) -> Iterator[Node]:
    """People log in with a password or through the provider (a public client: PKCE, no
    secret); CT studies are in project ``lung``, the others in ``default``."""
    running = Node(
        load_settings(
            data_dir=tmp_path_factory.mktemp("viewer-login") / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={
                "methods": ["password", "oidc"],
                "projects": [{"project": "lung", "attribute": "Modality", "value": "CT"}],
                "oidc": {
                    "issuer": issuer.url,
                    "audience": "pacsnode",
                    "client_id": CLIENT_ID,
                    "provider_name": "Test IdP",
                },
            },
        )
    )
    running.start()
    source = Source(door="folder", remote="test")
    for ds in synthetic():
        assert running.core.ingestor.accept(part10(ds), source).outcome.success
    Credentials(running.core.db, running.settings.access).add_user(
        USER, PASSWORD, ["viewer"], None, actor="test"
    )
    # the browser reaches the node as "localhost", the provider as 127.0.0.1: two sites,
    # as a hospital's provider and node are (a cookie's SameSite rules then apply)
    issuer.register(CLIENT_ID, [f"http://localhost:{running.http_port}/login/oidc/callback"], None)
    try:
        yield running
    finally:
        running.stop()


def study_uids(node: Node, issuer: TestIssuer, groups: list[str]) -> list[str]:
    answer = httpx.get(
        f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
        headers={"Authorization": f"Bearer {issuer.token(roles=['viewer'], groups=groups)}"},
        timeout=30,
    )
    answer.raise_for_status()
    return sorted(study[STUDY_UID]["Value"][0] for study in answer.json())


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A new browser profile: no cookie yet."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(SEEN_TOUR)
    try:
        yield context.new_page()
    finally:
        context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"login-{name}.png")


def viewport_drawn(page: Page) -> bool:
    """The viewport (not a thumbnail) shows an image: more than a few colours."""
    return bool(
        page.evaluate(
            """() => {
              for (const canvas of document.querySelectorAll('[data-cy="viewport-pane"] canvas')) {
                if (canvas.width < 64 || canvas.height < 64) continue;
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


def open_a_study(page: Page, study: str, name: str) -> None:
    """From the study list: the row, its Basic Viewer button, images drawn."""
    page.locator(f'[data-cy="studyRow-{study}"]').click()
    button = page.locator(f'[data-cy="mode-viewer-{study}"]')
    button.wait_for(timeout=10_000)
    button.click()
    page.wait_for_url(f"**/viewer/viewer?*StudyInstanceUIDs={study}*", timeout=10_000)
    assert _wait_until(lambda: viewport_drawn(page), 30, page), "blank viewport"
    shot(page, f"{name}-study")


def test_the_viewer_behind_a_password(node: Node, issuer: TestIssuer, page: Page) -> None:
    watch = Watch()
    watch.attach(page)
    base = f"http://127.0.0.1:{node.http_port}"
    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")
    assert page.url == f"{base}/login?next=%2Fviewer%2F"
    page.get_by_label("User").wait_for(timeout=10_000)
    shot(page, "password-page")
    page.get_by_label("User").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expected = study_uids(node, issuer, ["lung", "default"])  # alice: every project
    assert _wait_until(lambda: sorted(_listed(page)) == expected, 60, page), _listed(page)
    assert page.url.startswith(f"{base}/viewer")
    shot(page, "password-study-list")
    open_a_study(page, expected[0], "password")
    assert watch.problems == []


def test_a_wrong_password_stays_on_the_login_page(node: Node, page: Page) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")
    page.get_by_label("User").fill(USER)
    page.get_by_label("Password").fill("not the password at all")
    with page.expect_response(f"{base}/login") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 401
    page.get_by_text("Wrong user name or password.").wait_for(timeout=10_000)
    assert page.url == f"{base}/login"
    assert not [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    shot(page, "password-wrong")
    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")  # still nobody
    assert page.url.startswith(f"{base}/login?")


def test_the_viewer_behind_the_providers_login(node: Node, issuer: TestIssuer, page: Page) -> None:
    watch = Watch()
    watch.attach(page)
    base = f"http://localhost:{node.http_port}"
    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")
    assert page.url == f"{base}/login?next=%2Fviewer%2F"
    assert page.get_by_label("Password").count() == 1  # both ways are offered
    shot(page, "oidc-page")
    page.get_by_role("link", name="Log in with Test IdP").click()
    page.get_by_role("button", name="Sign in").wait_for(timeout=10_000)
    assert page.url.startswith(issuer.url)  # the provider's own page, another site
    shot(page, "oidc-provider")
    page.get_by_role("button", name="Sign in").click()
    expected = study_uids(node, issuer, ["lung"])  # the provider's groups: lung only
    assert _wait_until(lambda: sorted(_listed(page)) == expected, 60, page), (
        page.url,
        _listed(page),
    )
    assert page.url.startswith(f"{base}/viewer")
    asked = issuer.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and asked["client_id"] == CLIENT_ID
    assert "client_secret" not in issuer.token_requests[-1]  # a public client: PKCE alone
    shot(page, "oidc-study-list")
    open_a_study(page, expected[0], "oidc")
    # a link straight to a study opens in a new tab of the same browser (the session
    # cookie is the node's own: no redirect through the provider)
    tab = watch.attach(page.context.new_page())
    tab.goto(f"{base}/viewer/viewer?StudyInstanceUIDs={expected[1]}", wait_until="load")
    assert _wait_until(lambda: viewport_drawn(tab), 30, tab), "blank viewport"
    shot(tab, "oidc-deep-link")
    assert watch.problems == []


@pytest.fixture(scope="module")
def token_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    running = Node(
        load_settings(
            data_dir=tmp_path_factory.mktemp("viewer-token") / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={"methods": ["token"]},
        )
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_with_tokens_alone_the_viewer_says_there_is_no_login_for_people(
    token_node: Node, page: Page
) -> None:
    base = f"http://127.0.0.1:{token_node.http_port}"
    page.goto(f"{base}/viewer/", wait_until="domcontentloaded")
    assert page.url == f"{base}/login?next=%2Fviewer%2F"
    page.get_by_text("No login for people is set up on this node").wait_for(timeout=10_000)
    assert page.get_by_label("Password").count() == 0
    assert page.get_by_role("link", name="Log in with").count() == 0
    shot(page, "token-only")
    # programs use the node with a token
    token = Credentials(token_node.core.db, token_node.settings.access).create_token(
        "script", ["viewer"], None, "test"
    )
    answer = httpx.get(
        f"{base}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200
