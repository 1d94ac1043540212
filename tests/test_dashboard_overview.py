"""The overview and dataset pages and their API (``/api/stats``) on a running node loaded
with the synthetic labelled set: the figures equal the catalog's, filters and projects
restrict them, and the pages show them in headless Chromium (every chart drawn, a click on
a bar filters the others). Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import Browser, Page

from access.credentials import Credentials
from config import load_settings
from node.app import Node
from tests.browser import ARTIFACTS
from tests.synthetic import generate
from tests.test_dashboard_pages import PASSWORD, logged_in, open_logged_in
from tests.test_statistics import SPEC, Row, load, rows_of


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("overview")
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={"methods": ["password"]},
        )
    )
    running.start()
    credentials = Credentials(running.core.db, running.settings.access)
    credentials.add_user("admin", PASSWORD, ["admin"], None, actor="test")
    credentials.add_user("alice", PASSWORD, ["researcher"], ["a"], actor="test")
    credentials.add_user("bob", PASSWORD, ["researcher"], ["b"], actor="test")
    credentials.add_user("reader", PASSWORD, ["viewer"], None, actor="test")
    try:
        load(running.core, generate(folder / "synthetic", SPEC), folder / "synthetic")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def rows(node: Node) -> list[Row]:
    return rows_of(node.core)


@pytest.fixture(scope="module")
def clients(node: Node) -> Iterator[dict[str, httpx.Client]]:
    made = {user: logged_in(node, user) for user in ("admin", "alice", "bob", "reader")}
    yield made
    for client in made.values():
        client.close()


def stats(client: httpx.Client, path: str = "/api/stats", **params: Any) -> Any:
    answer = client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def expected_counts(rows: list[Row]) -> dict[str, int]:
    return {
        "patients": len({r.patient for r in rows}),
        "studies": len(rows),
        "series": sum(r.series for r in rows),
        "instances": sum(r.instances for r in rows),
        "bytes": sum(r.size for r in rows),
        "reports": sum(r.reports for r in rows),
        "labelled_studies": sum(1 for r in rows if r.labels),
    }


def keyed(buckets: list[dict[str, Any]]) -> dict[str | None, int]:
    return {b["key"]: b["count"] for b in buckets}


# ---------------------------------------------------------------------------------- API


def test_the_overview_figures_are_the_catalogs(
    clients: dict[str, httpx.Client], rows: list[Row]
) -> None:
    found = stats(clients["admin"])
    assert found["counts"] == expected_counts(rows)
    assert keyed(found["modality"]) == {"CT": 8, "MR": 8}
    assert keyed(found["source"]) == {"dimse:MOD_A": 8, "folder": 8}
    assert sum(b["count"] for b in found["sex"]) == 16
    assert found["ingest"]["per_day"][0]["studies"] == 16
    assert found["tasks"]["lung_nodule"]["description_zh"] == "肺结节良恶性（肺）"
    lung = {b["value"]: b["count"] for b in found["labels"] if b["task"] == "lung_nodule"}
    assert lung == {1: 3, 0: 5}


def test_query_parameters_filter_the_figures(
    clients: dict[str, httpx.Client], rows: list[Row]
) -> None:
    admin = clients["admin"]
    mr = stats(admin, modality="MR")
    assert mr["counts"] == expected_counts([r for r in rows if "MR" in r.modalities])
    assert mr["filters"] == {"modality": "MR"}
    malignant_ct = stats(admin, params=None, label="lung_nodule:1", source="folder")
    assert malignant_ct["counts"] == expected_counts(
        [r for r in rows if r.labels.get("lung_nodule") == 1 and "b" in r.projects]
    )
    some = rows[0]
    month = stats(admin, month=some.month, age=some.age)
    assert month["counts"] == expected_counts(
        [r for r in rows if r.month == some.month and r.age == some.age]
    )
    for bad in ({"label": "lung_nodule"}, {"label": "lung_nodule:7"}, {"month": "2024"}):
        assert admin.get("/api/stats", params=bad).status_code == 422


def test_a_caller_of_one_project_sees_none_of_anothers_numbers(
    clients: dict[str, httpx.Client], rows: list[Row]
) -> None:
    for user, project in (("alice", "a"), ("bob", "b")):
        mine = [r for r in rows if project in r.projects]
        found = stats(clients[user])
        assert found["counts"] == expected_counts(mine)
        assert keyed(found["source"]) == {("dimse:MOD_A" if project == "a" else "folder"): 8}
        tasks = {t["task"]: t for t in stats(clients[user], "/api/stats/tasks")}
        lung = {c["value"]: c["count"] for c in tasks["lung_nodule"]["classes"]}
        assert lung == {
            value: sum(1 for r in mine if r.labels.get("lung_nodule") == value)
            for value in (1, 0, 2, -1)
        }
    # a filter naming the other project's source finds nothing
    assert stats(clients["alice"], source="folder")["counts"]["studies"] == 0


@pytest.fixture(scope="module")
def cohort(clients: dict[str, httpx.Client]) -> str:
    """A cohort on the lung task, defined by alice (so over project a)."""
    alice = clients["alice"]
    definition = {"filters": {"labels": [{"task": "lung_nodule"}]}}
    created = alice.post(
        "/api/cohorts",
        json={"name": "lung-a", "description": "lungs of a", "definition": definition},
        headers={"Origin": str(alice.base_url).rstrip("/")},
    )
    assert created.status_code == 201, created.text
    return "lung-a@1"


def test_the_dataset_api_gives_classes_figures_and_cohorts(
    clients: dict[str, httpx.Client], rows: list[Row], cohort: str
) -> None:
    alice = clients["alice"]
    tasks = stats(alice, "/api/stats/tasks")
    assert [t["task"] for t in tasks] == [
        "pancreatic_cancer",
        "breast_cancer",
        "lung_nodule",
        "liver_cancer",
    ]
    assert all(c["meaning_zh"] for t in tasks for c in t["classes"])
    detail = stats(alice, "/api/stats/tasks/lung_nodule")
    mine = [r for r in rows if "a" in r.projects and r.labels.get("lung_nodule", -1) != -1]
    assert detail["studies"] == len(mine)
    assert detail["overview"]["counts"]["studies"] == len(mine)
    assert keyed(detail["overview"]["modality"]) == {"CT": len(mine)}
    assert [c["ref"] for c in detail["cohorts"]] == [cohort]
    assert stats(clients["bob"], "/api/stats/tasks/lung_nodule")["cohorts"] == []
    assert stats(alice, "/api/stats/tasks/liver_cancer")["cohorts"] == []
    assert alice.get("/api/stats/tasks/no_such_task").status_code == 404


def test_permissions_and_the_api_description(node: Node, clients: dict[str, httpx.Client]) -> None:
    reader = clients["reader"]
    assert reader.get("/api/stats").status_code == 200
    assert reader.get("/api/stats/tasks").status_code == 403
    assert reader.get("/api/stats/tasks/lung_nodule").status_code == 403
    base = f"http://127.0.0.1:{node.http_port}"
    assert httpx.get(f"{base}/api/stats").status_code == 401
    spec = httpx.get(f"{base}/openapi.json").json()
    for path in ("/api/stats", "/api/stats/tasks", "/api/stats/tasks/{task}"):
        operation = spec["paths"][path]["get"]
        assert operation["summary"] and operation["tags"] == ["statistics"]
        assert "$ref" in str(operation["responses"]["200"])


# ------------------------------------------------------------------------------ pages


def canvas_drawn(page: Page, name: str) -> bool:
    drawn: bool = page.eval_on_selector(
        f'[data-chart="{name}"] canvas',
        """canvas => {
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
            return pixels.data.some((value, index) => index % 4 === 3 && value > 0);
        }""",
    )
    return drawn


def chart_values(page: Page, name: str) -> list[Any]:
    values: list[Any] = page.evaluate(
        """name => echarts.getInstanceByDom(document.querySelector(`[data-chart="${name}"]`))
            .getOption().series.map(s => s.data.map(d => d.value ?? d))""",
        name,
    )
    return values


def click_bar(page: Page, name: str, category: str) -> None:
    """A real mouse click in the middle of the bar of ``category``."""
    box = page.locator(f'[data-chart="{name}"]').bounding_box()
    assert box is not None
    x, top, bottom = page.evaluate(
        """([name, category]) => {
            const element = document.querySelector(`[data-chart="${name}"]`);
            const chart = echarts.getInstanceByDom(element);
            const index = chart.getOption().xAxis[0].data.indexOf(category);
            const value = chart.getOption().series[0].data[index].value;
            const [x, top] = chart.convertToPixel({ seriesIndex: 0 }, [index, value]);
            const bottom = chart.convertToPixel({ seriesIndex: 0 }, [index, 0])[1];
            return [x, top, bottom];
        }""",
        [name, category],
    )
    page.mouse.click(box["x"] + x, box["y"] + (top + bottom) / 2)


OVERVIEW_CHARTS = (
    "ingest_day",
    "ingest_hour",
    "labels",
    "modality",
    "sequence",
    "body_part",
    "sex",
    "age",
    "month",
    "source",
)


def test_the_overview_page_shows_the_catalog_and_a_click_filters(
    browser: Browser, node: Node, rows: list[Row]
) -> None:
    page, errors = open_logged_in(browser, node, "/")
    page.wait_for_selector("body[data-loaded=all]")
    shown = {
        card.get_attribute("data-count"): int(card.get_attribute("data-value") or -1)
        for card in page.query_selector_all("#counts .card")
    }
    assert shown == expected_counts(rows)
    assert page.inner_text("[data-count=studies] .value") == "16"
    for name in OVERVIEW_CHARTS:
        assert canvas_drawn(page, name), name
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-overview.png", full_page=True)

    sex_before = chart_values(page, "sex")
    click_bar(page, "modality", "MR")
    page.wait_for_selector("body[data-loaded='modality=MR']")
    assert page.url.endswith("/?modality=MR")
    assert page.inner_text("#chips").startswith("Modality: MR")
    assert page.get_attribute("#see-studies", "href") == "/studies?modality=MR"
    mr = expected_counts([r for r in rows if "MR" in r.modalities])
    assert page.get_attribute("[data-count=studies]", "data-value") == str(mr["studies"])
    assert chart_values(page, "sex") != sex_before  # the other charts changed
    assert sum(chart_values(page, "sex")[0]) == mr["studies"]
    assert chart_values(page, "modality") == [[8, 8]]  # its own chart keeps both bars
    page.screenshot(path=ARTIFACTS / "dashboard-overview-filtered.png", full_page=True)

    page.click("#chips .chip")  # removed again
    page.wait_for_selector("body[data-loaded=all]")
    assert page.inner_text("#chips") == ""
    page.context.close()
    assert errors == []


def test_the_overview_in_chinese(browser: Browser, node: Node) -> None:
    page, errors = open_logged_in(browser, node, "/?lang=zh&sex=F")
    page.wait_for_selector("body[data-loaded='sex=F']")
    assert "性别: 女" in page.inner_text("#chips")
    assert "概览" in page.inner_text("h1")
    assert page.get_attribute("#see-studies", "href") == "/studies?sex=F"
    page.context.close()
    assert errors == []


def test_the_dataset_pages_show_the_tasks_classes_and_cohorts(
    browser: Browser, node: Node, rows: list[Row], cohort: str
) -> None:
    page, errors = open_logged_in(browser, node, "/datasets")
    page.wait_for_selector("body[data-loaded=yes]")
    for task in ("pancreatic_cancer", "breast_cancer", "lung_nodule", "liver_cancer"):
        for value in (1, 0, 2, -1):
            count = page.get_attribute(f"[data-task={task}] li[data-class='{value}']", "data-count")
            assert count == str(sum(1 for r in rows if r.labels.get(task) == value)), task
    page.click("[data-task=lung_nodule] a")
    page.wait_for_url("**/datasets/lung_nodule")
    page.wait_for_selector("body[data-loaded=yes]")
    assert page.inner_text("h1") == "Lung nodule malignancy (lungs)"
    for value in (1, 0, 2, -1):
        cells = page.locator(f"#classes tr[data-class='{value}'] td").all_inner_texts()
        assert cells[2] == str(sum(1 for r in rows if r.labels.get("lung_nodule") == value))
    addressed = [r for r in rows if r.labels.get("lung_nodule", -1) != -1]
    assert page.get_attribute("[data-count=studies]", "data-value") == str(len(addressed))
    for name in ("classes", "modality", "sequence", "sex", "age"):
        assert canvas_drawn(page, name), name
    assert page.locator(f"#cohorts tr[data-cohort='{cohort}']").count() == 1  # admin sees all
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-dataset.png", full_page=True)
    page.goto(page.url + "?lang=zh")
    page.wait_for_selector("body[data-loaded=yes]")
    assert page.inner_text("h1") == "肺结节良恶性（肺）"
    assert "恶性：肺癌，或肺转移" in page.inner_text("#classes")
    page.context.close()
    assert errors == []


@pytest.mark.parametrize("dimension", ["label", "age", "month", "source"])
def test_see_these_studies_lists_the_studies_the_overview_counts(
    browser: Browser, node: Node, clients: dict[str, httpx.Client], dimension: str
) -> None:
    """The study list reads the overview's filters in its own words (an age decade, a label's
    task and class, a month, a source): it lists as many studies as the overview counts."""
    overview = stats(clients["admin"])
    if dimension == "label":
        most = max(
            (b for b in overview["labels"] if b["value"] in (0, 1, 2)), key=lambda b: b["count"]
        )
        key = f"{most['task']}:{most['value']}"
    else:
        known = [b for b in overview[dimension] if b["key"] is not None]
        key = str(max(known, key=lambda b: b["count"])["key"])
    counted = stats(clients["admin"], **{dimension: key})["counts"]["studies"]
    page, errors = open_logged_in(browser, node, f"/?{urlencode({dimension: key})}")
    page.wait_for_selector("body[data-loaded]:not([data-loaded=all])")
    link = page.get_attribute("#see-studies", "href")
    assert link is not None and link.startswith("/studies?")
    page.goto(f"http://127.0.0.1:{node.http_port}{link}")
    page.wait_for_selector("#summary[data-count]")
    # a total where the list needs /api/studies; a month is a date range QIDO-RS matches
    # (one page: the archive holds fewer studies than a page)
    total = page.get_attribute("#summary", "data-total")
    listed = page.get_attribute("#summary", "data-count")
    assert int(total or listed or -1) == counted > 0
    page.context.close()
    assert errors == []
