"""The Studies page in headless Chromium on a node holding a small labelled archive
(tests/dashboard_data.py): it lists the catalog's studies, search narrows them, the
Overview's filters apply, a row opens to its labels and reports with the evidence marked,
and the viewer button points at the bundled viewer. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page
from sqlalchemy import select

from catalog.models import Label, Study
from node.app import Node
from tests.browser import ARTIFACTS
from tests.dashboard_data import EXAMS, PASSWORD, labelled_node, stored_patient_ids


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with labelled_node(tmp_path_factory.mktemp("studies-page")) as running:
        yield running


def open_as(browser: Browser, node: Node, user: str, path: str) -> tuple[Page, list[str]]:
    """A new browser profile logged in as ``user`` at ``path``; the console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
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


def listed(page: Page) -> list[str]:
    """The Study Instance UIDs of the rows shown, once the list has loaded."""
    page.wait_for_selector("#summary[data-count]")
    return page.eval_on_selector_all("tr.study", "rows => rows.map(r => r.dataset.study)")


def search(page: Page, field: str, value: str) -> list[str]:
    page.evaluate("() => document.getElementById('summary').removeAttribute('data-count')")
    page.fill(f"#search [name={field}]", value)
    page.click("#search button[type=submit]")
    return listed(page)


def test_the_list_search_details_and_viewer_link(browser: Browser, node: Node) -> None:
    patients = stored_patient_ids(node.core)
    page, errors = open_as(browser, node, "admin", "/studies")
    shown = listed(page)
    assert len(shown) == len(EXAMS) == len(patients) and set(shown) == set(patients)
    assert page.inner_text("#summary") == f"Studies 1–{len(EXAMS)}"
    known = patients[shown[4]]
    assert page.inner_text(f"tr.study[data-study='{shown[4]}'] td:nth-child(2)") == known
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-studies.png", full_page=True)

    assert search(page, "PatientID", known) == [shown[4]]
    assert "PatientID=" in page.url  # the search is in the address
    assert search(page, "PatientID", "") == shown
    assert len(search(page, "ModalitiesInStudy", "MR")) == 2
    assert search(page, "ModalitiesInStudy", "") == shown

    with node.core.db.read() as session:
        cyst = session.scalar(
            select(Study.study_instance_uid)
            .join(Label, Label.study_pk == Study.id)
            .where(Label.task == "liver_cancer", Label.value == 0)
        )
    row = page.locator(f"tr.study[data-study='{cyst}']")
    viewer = row.locator("a.viewer")
    assert viewer.get_attribute("href") == f"/viewer/viewer?StudyInstanceUIDs={cyst}"
    assert viewer.get_attribute("target") == "_blank"
    row.locator("button.expand").click()
    details = page.locator(f"tr.study[data-study='{cyst}'] + tr.details")
    details.locator("pre.report mark").first.wait_for()
    liver = details.locator("table.labels tr[data-task=liver_cancer]")
    assert "no malignancy" in liver.inner_text() and "liver cyst" in liver.inner_text()
    marks = details.locator("pre.report mark").all_inner_texts()
    assert "liver cyst" in marks and "pancreatic mass" in marks
    assert details.locator("pre.report").inner_text() == "Findings: liver cyst. No pancreatic mass."
    page.screenshot(path=ARTIFACTS / "dashboard-studies-details.png", full_page=True)
    page.context.close()
    assert errors == []


def test_the_overviews_filters_and_chinese(browser: Browser, node: Node) -> None:
    page, errors = open_as(
        browser, node, "admin", "/studies?task=pancreatic_cancer&class=1&lang=zh"
    )
    assert len(listed(page)) == 2
    assert page.inner_text("#summary") == "第 1–2 项检查，共 2 项"
    chips = page.inner_text("#filters")
    assert "胰腺癌" in chips and "恶性" in chips
    assert "恶性" in page.inner_text("tr.study td:nth-child(11)")
    page.screenshot(path=ARTIFACTS / "dashboard-studies-zh.png", full_page=True)
    page.evaluate("() => document.getElementById('summary').removeAttribute('data-count')")
    page.click("#filters [data-filter=task] button")
    assert len(listed(page)) == len(EXAMS)
    page.context.close()
    assert errors == []


def test_a_caller_of_one_project_lists_only_its_studies(browser: Browser, node: Node) -> None:
    page, errors = open_as(browser, node, "bob", "/studies?source=MOD_A")
    assert listed(page) == []
    page.goto(f"http://127.0.0.1:{node.http_port}/studies")
    shown = listed(page)
    assert len(shown) == sum(exam.project == "b" for exam in EXAMS)
    page.context.close()
    assert errors == []
