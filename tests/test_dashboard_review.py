"""The Label review page in headless Chromium on a node holding a small labelled archive
(tests/dashboard_data.py): each label waiting for review is shown with its reports and the
evidence marked; a key confirms it or picks a class, which the catalog then holds under
the reviewer's name; the reviewed list says who decided what. Screenshots to ``artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page
from sqlalchemy import select

from catalog.models import Label, StudyProject
from node.app import Node
from tests.browser import ARTIFACTS
from tests.dashboard_data import labelled_node
from tests.test_dashboard_studies import open_as


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with labelled_node(tmp_path_factory.mktemp("review-page")) as running:
        yield running


def stored(node: Node, label_id: int) -> Label:
    with node.core.db.read() as session:
        label = session.get(Label, label_id)
        assert label is not None
        session.expunge(label)
        return label


def waiting(page: Page, count: int) -> list[int]:
    """The queue's label ids once it holds ``count`` labels."""
    page.wait_for_selector(f"#status[data-waiting='{count}']")
    return [
        int(i) for i in page.eval_on_selector_all("#queue li", "l => l.map(i => i.dataset.label)")
    ]


def current(page: Page) -> int:
    return int(page.get_attribute("#current", "data-label") or 0)


def test_review_with_the_keyboard_is_stored_and_listed(browser: Browser, node: Node) -> None:
    with node.core.db.read() as session:
        expected = session.scalars(
            select(Label.id)
            .where(Label.needs_review.is_(True))
            .order_by(Label.confidence, Label.id)
        ).all()
    assert len(expected) == 3
    page, errors = open_as(browser, node, "admin", "/review")
    assert waiting(page, 3) == expected
    first = page.locator("#evidence pre.report mark").first
    first.wait_for()
    task = stored(node, expected[0]).task
    assert (
        page.locator("#evidence pre.report mark").evaluate_all(
            "marks => marks.map(m => m.dataset.task)"
        )
        == [task] * page.locator("#evidence pre.report mark").count()
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-review.png", full_page=True)

    page.keyboard.press("j")
    page.wait_for_selector(f"#queue li[data-label='{expected[1]}'][aria-current=true]")
    page.wait_for_function(f"document.getElementById('current').dataset.label == '{expected[1]}'")
    page.keyboard.press("y")
    assert waiting(page, 2) == [expected[0], expected[2]]
    confirmed = stored(node, expected[1])
    assert (confirmed.review_status, confirmed.reviewed_by) == ("confirmed", "user:admin")
    assert confirmed.override_value == confirmed.value and not confirmed.needs_review

    page.wait_for_function(f"document.getElementById('current').dataset.label == '{expected[2]}'")
    page.keyboard.press("k")  # back to the first; the third (of project b) stays for bob
    page.wait_for_function(f"document.getElementById('current').dataset.label == '{expected[0]}'")
    page.fill("#note", "second opinion")
    page.locator("#note").blur()
    page.keyboard.press("2")  # the second class: 0, no malignancy
    assert waiting(page, 1) == [expected[2]]
    changed = stored(node, expected[0])
    assert (changed.override_value, changed.review_status) == (0, "overridden")
    assert (changed.reviewed_by, changed.review_note) == ("user:admin", "second opinion")

    page.wait_for_selector(f"#reviewed tr[data-label='{expected[1]}']")
    rows = page.locator("#reviewed tbody tr")
    assert rows.count() == 2
    assert page.inner_text(f"#reviewed tr[data-label='{expected[0]}'] td:nth-child(2)") == (
        "user:admin"
    )
    assert "no malignancy" in page.inner_text(f"#reviewed tr[data-label='{expected[0]}']")
    page.screenshot(path=ARTIFACTS / "dashboard-review-done.png", full_page=True)
    page.context.close()
    assert errors == []


def test_a_caller_of_one_project_reviews_only_its_labels(browser: Browser, node: Node) -> None:
    with node.core.db.read() as session:
        of_b = set(
            session.scalars(
                select(Label.id)
                .join(StudyProject, StudyProject.study_pk == Label.study_pk)
                .where(StudyProject.project == "b")
            )
        )
        waiting_ids = set(session.scalars(select(Label.id).where(Label.needs_review.is_(True))))
        reviewed = set(session.scalars(select(Label.id).where(Label.review_status != "auto")))
    page, errors = open_as(browser, node, "bob", "/review?lang=zh")
    page.wait_for_selector("#status[data-waiting]")
    shown = page.eval_on_selector_all("#queue li", "l => l.map(i => Number(i.dataset.label))")
    assert set(shown) == waiting_ids & of_b and shown
    page.locator("#evidence pre.report mark").first.wait_for()
    page.wait_for_selector("#reviewed[data-loaded]")
    listed = page.eval_on_selector_all(
        "#reviewed tbody tr", "r => r.map(x => Number(x.dataset.label))"
    )
    assert set(listed) == reviewed & of_b and reviewed - of_b  # the admin reviewed a's
    assert "确认" in page.inner_text("#legend")
    page.screenshot(path=ARTIFACTS / "dashboard-review-zh.png", full_page=True)
    page.context.close()
    assert errors == []
