"""The Cohorts page on a node loaded with the synthetic labelled set, in headless Chromium:
a cohort built through the form previews what the API and the catalog say, is saved and
frozen through the page (the API then lists it frozen with the manifest hash the page
shows), and its export downloads as a zip whose manifest has that hash.

Projects: the labelled set is in project ``a``, two more patients in ``b``. A researcher of
``a`` builds the cohort; an analyst of ``a`` (``cohorts.read`` and ``export``, no
``cohorts.write``) may preview and download but sees the form read-only (no saving, no
freezing, said on the page) and is refused by the API; a researcher of ``b`` sees none of
``a``'s numbers or cohorts. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page
from pydicom import dcmread
from sqlalchemy import func, select

from access.credentials import Credentials
from catalog.models import Label, Patient, Series, Study
from catalog.projects import in_projects
from config import load_settings
from config.access import DEFAULT_ROLES
from export import Cohorts
from export.choices import form_choices
from ingest import Source
from labeling import IncomingReport
from labeling.tasks import DEFAULT_TASKS_FILE
from node.app import Core, Node, build_label_source
from tests.browser import ARTIFACTS
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate
from tests.test_dashboard_pages import LOCALES, PASSWORD

SPEC_A = SyntheticSpec(patients=8, ct_slices=4, mr_slices=3, rows=16, columns=16, seed=7)
"""Project a: 8 patients, each a CT study (one series of 4) and an MR study (two of 3)."""
SPEC_B = SyntheticSpec(patients=2, ct_slices=3, mr_slices=2, rows=16, columns=16, seed=29)
"""Project b: 2 patients."""
NEGATIVE = "Impression: No pulmonary nodules. The lungs are clear."
MALIGNANT = (
    "Impression: Spiculated mass in the right upper lobe, consistent with primary lung cancer."
)
MALIGNANT_PATIENTS = (1, 4, 6)
TASK = "lung_nodule"


def ingest(core: Core, synthetic: SyntheticDataset, project: str) -> None:
    source = Source(door="folder", remote="test", projects=(project,))
    for file in synthetic.files:
        result = core.ingestor.accept(file.read_bytes(), source)
        assert result.outcome.success, result.reason


def report_on_ct(core: Core, synthetic: SyntheticDataset, folder: Path) -> None:
    """A radiology report for each patient's CT study: lung cancer for three patients,
    clear lungs for the others (labeling derives the lung_nodule labels)."""
    for index, phi in enumerate(synthetic.patients):
        study_date = dcmread(folder / str(index) / "0" / "0" / "1.dcm").StudyDate
        result = core.report_intake.accept(
            IncomingReport(
                report_type="radiology",
                patient_id=phi.patient_id,
                patient_names=(phi.patient_name,),
                accession_number=phi.accession_numbers[0],
                exam_date=date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:])),
                modality="CT",
                impression=MALIGNANT if index in MALIGNANT_PATIENTS else NEGATIVE,
            ),
            "file",
        )
        assert [method for _, method, _ in result.links] == ["accession"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("dashboard-cohorts")
    running = Node(
        load_settings(
            data_dir=root / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={
                "methods": ["password"],
                "roles": {**DEFAULT_ROLES, "analyst": ["cohorts.read", "export"]},
                "default_project": "a",
            },
        )
    )
    running.start()
    try:
        labelled = generate(root / "a", SPEC_A)
        ingest(running.core, labelled, "a")
        report_on_ct(running.core, labelled, root / "a")
        ingest(running.core, generate(root / "b", SPEC_B), "b")
        credentials = Credentials(running.core.db, running.settings.access)
        for user, role, project in (
            ("researcher", "researcher", "a"),
            ("analyst", "analyst", "a"),
            ("researcher_b", "researcher", "b"),
        ):
            credentials.add_user(user, PASSWORD, [role], [project], actor="test")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def api_cohort(node: Node) -> dict[str, Any]:
    """A cohort defined and frozen over the API by the researcher of project a."""
    definition = {
        "filters": {"modalities": ["CT"], "labels": [{"task": TASK, "classes": ["1", "0"]}]},
        "balance": {"by": f"label:{TASK}"},
        "split": {},
        "seed": 3,
    }
    with client(node, "researcher") as researcher:
        saved = researcher.post("/api/cohorts", json={"name": "ct-api", "definition": definition})
        assert saved.status_code == 201, saved.text
        info: dict[str, Any] = researcher.post("/api/cohorts/ct-api@1/freeze").json()
    return info


@contextmanager
def client(node: Node, user: str) -> Iterator[httpx.Client]:
    """An HTTP client logged in as ``user`` (its changes come from the node's own site, as
    the page's do)."""
    base = f"http://127.0.0.1:{node.http_port}"
    with httpx.Client(base_url=base, headers={"Origin": base}, timeout=60) as logged:
        assert logged.post("/login", data={"username": user, "password": PASSWORD}).is_redirect
        yield logged


def open_as(browser: Browser, node: Node, user: str, path: str) -> tuple[Page, list[str]]:
    """A new browser profile logged in as ``user`` at ``path``, once the page has loaded
    its form and list; the console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
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
    page.wait_for_selector("#sexes input")
    page.wait_for_selector("[data-count=series]")
    return page, errors


def shown_definition(page: Page) -> dict[str, Any]:
    return dict(json.loads(page.text_content("#definition-json") or "{}"))


def wait_for_counts(page: Page, counts: dict[str, Any]) -> None:
    """Until the preview's cards show ``counts`` (the debounced preview has caught up)."""
    wanted = {key: f"{counts[key]:,}" for key in ("patients", "studies", "series", "instances")}
    page.wait_for_function(
        """wanted => Object.entries(wanted).every(([key, text]) =>
             document.querySelector(`[data-count=${key}] .value`)?.textContent === text)""",
        arg=wanted,
    )


def charts_drawn(page: Page) -> dict[str, bool]:
    """Each preview chart, and whether its canvas has any painted pixel."""
    drawn: dict[str, bool] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-chart]')].map(box => {
             const canvas = box.querySelector('canvas');
             const pixels = canvas.getContext('2d')
               .getImageData(0, 0, canvas.width, canvas.height).data;
             return [box.dataset.chart, pixels.some((value, i) => i % 4 === 3 && value > 0)];
           }))"""
    )
    return drawn


def catalog_counts(node: Node, project: str, classes: set[int]) -> dict[str, Any]:
    """What the catalog holds for CT series of ``project`` whose study has a lung_nodule
    label of ``classes``: straight SQL, not the export code."""
    value = func.coalesce(Label.override_value, Label.value)
    with node.core.db.read() as session:
        rows = session.execute(
            select(Patient.patient_id, Study.id, Series.id, Series.number_of_instances, value)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
            .join(Label, Label.study_pk == Study.id)
            .where(
                Series.modality == "CT",
                Label.task == TASK,
                value.in_(classes),
                in_projects(Study.id, frozenset({project})),
            )
        ).all()
    return {
        "patients": len({r[0] for r in rows}),
        "studies": len({r[1] for r in rows}),
        "series": len(rows),
        "instances": sum(r[3] for r in rows),
        "classes": dict(Counter(str(r[4]) for r in rows)),
    }


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"dashboard-cohorts-{name}.png", full_page=True)


# ------------------------------------------------------------------------------ strings


def test_class_meanings_are_the_task_files_and_have_chinese() -> None:
    english = json.loads((LOCALES / "en.json").read_text("utf-8"))
    chinese = json.loads((LOCALES / "zh.json").read_text("utf-8"))
    shipped = tomllib.loads(DEFAULT_TASKS_FILE.read_text("utf-8"))["tasks"]
    for name, task in shipped.items():
        assert english[f"cohorts.task.{name}"] == task["description"]
        for value, meaning in task["classes"].items():
            key = f"cohorts.meaning.{name}.{value}"
            assert english[key] == meaning["meaning"]
            assert any("\u4e00" <= c <= "\u9fff" for c in chinese[key]), key


# ---------------------------------------------------------------------------- form API


def test_the_form_offers_tasks_sequences_and_the_callers_series(node: Node) -> None:
    with client(node, "researcher") as researcher, client(node, "researcher_b") as other:
        mine = researcher.get("/api/cohorts/_form").json()
        theirs = other.get("/api/cohorts/_form").json()
        everything_a = researcher.post("/api/cohorts/preview", json={}).json()
        everything_b = other.post("/api/cohorts/preview", json={}).json()
    lung = next(task for task in mine["tasks"] if task["name"] == TASK)
    assert {c["value"] for c in lung["classes"]} == {"1", "0", "2", "-1"}
    assert "DWI" in mine["sequences"] and f"label:{TASK}" in mine["groupings"]
    assert mine["can"] == {"write": True, "export": True}
    # each caller's own series only: 8 patients (a CT and two MR series each) against 2
    assert mine["modalities"] == {"CT": 8, "MR": 16} == everything_a["modality"]
    assert theirs["modalities"] == {"CT": 2, "MR": 4} == everything_b["modality"]
    assert sum(mine["body_parts"].values()) == 24
    assert sum(theirs["body_parts"].values()) == 6


@pytest.mark.parametrize("projects", [None, frozenset({"a"}), frozenset({"b"})])
def test_form_choices_count_in_the_database_as_the_selection_does(
    core: Core, tmp_path: Path, projects: frozenset[str] | None
) -> None:
    ingest(core, generate(tmp_path / "a", SPEC_A), "a")
    ingest(core, generate(tmp_path / "b", SPEC_B), "b")
    cohorts = Cohorts(core.db, core.settings.export, build_label_source(core.report_intake.tasks))
    choices = form_choices(cohorts, projects)
    everything = cohorts.preview({}, projects)
    assert choices["modalities"] == everything["modality"]
    assert choices["body_parts"] == {
        key.upper(): count for key, count in everything["body_part"].items() if key != "unknown"
    }


# ----------------------------------------------------------------------------- the page


def test_a_cohort_built_in_the_form_previews_saves_freezes_and_downloads(
    browser: Browser, node: Node, tmp_path: Path
) -> None:
    page, errors = open_as(browser, node, "researcher", "/cohorts")
    page.check("#modalities input[value=CT]")
    page.click("#add-label")
    page.select_option(".label-filter .label-task", TASK)
    page.check(".label-classes input[value='1']")
    page.check(".label-classes input[value='0']")

    # unbalanced: exactly what the catalog holds, and what the API previews
    definition = shown_definition(page)
    assert definition["filters"] == {
        "modalities": ["CT"],
        "labels": [{"task": TASK, "classes": ["1", "0"]}],
    }
    expected = catalog_counts(node, "a", {0, 1})
    assert expected["classes"] == {"1": 3, "0": 5}
    with client(node, "researcher") as researcher:
        previewed = researcher.post("/api/cohorts/preview", json=definition).json()
    assert {k: previewed[k] for k in ("patients", "studies", "series", "instances")} == {
        k: expected[k] for k in ("patients", "studies", "series", "instances")
    }
    assert previewed["classes"][TASK] == expected["classes"]
    wait_for_counts(page, previewed)
    assert page.locator("[data-chart='classes:lung_nodule']").count() == 1

    # balanced by the label and split by patient, with a seed
    page.select_option("#balance-by", f"label:{TASK}")
    page.check("#split-enabled")
    page.fill("#seed", "3")
    definition = shown_definition(page)
    assert definition["balance"] == {"by": f"label:{TASK}", "mode": "undersample"}
    assert definition["split"] == {"fractions": {"train": 0.7, "validation": 0.15, "test": 0.15}}
    with client(node, "researcher") as researcher:
        previewed = researcher.post("/api/cohorts/preview", json=definition).json()
    assert previewed["classes"][TASK] == {"0": 3, "1": 3}  # undersampled to the smallest
    wait_for_counts(page, previewed)
    for name, split in previewed["splits"].items():
        row = page.locator(f"#split-table tr[data-split={name}]")
        assert row.locator(".patients").inner_text() == str(split["patients"])
        assert row.locator(".series").inner_text() == str(split["series"])
    drawn = charts_drawn(page)
    assert set(drawn) == {
        "classes:lung_nodule",
        "sex",
        "age",
        "modality",
        "sequence",
        "body_part",
        "splits",
    }
    assert all(drawn.values()), drawn
    screenshot(page, "preview")

    # save, then freeze from the list
    page.fill("#cohort-name", "lung-ct")
    page.fill("#cohort-description", "CT, lung nodule 0/1, balanced")
    page.click("#save")
    row = page.locator("tr[data-ref='lung-ct@1']")
    row.wait_for()
    assert "lung-ct@1" in (page.text_content("#save-status") or "")
    row.locator("button.freeze").click()
    row.locator("code.hash").wait_for()
    shown_hash = row.locator("code.hash").inner_text()
    with client(node, "researcher") as researcher:
        listed = {c["name"]: c for c in researcher.get("/api/cohorts").json()}
    frozen = listed["lung-ct"]
    assert frozen["frozen_at"] is not None and frozen["manifest_sha256"] == shown_hash
    assert frozen["series"] == previewed["series"] == 6
    assert frozen["definition"]["seed"] == 3
    assert row.locator("button.freeze").count() == 0

    # download: streamed into the page, saved from a Blob URL
    row = page.locator("tr[data-ref='lung-ct@1']")
    row.locator("select.format").select_option("dicom")
    with page.expect_download() as downloading:
        row.locator("button.download").click()
    download = downloading.value
    assert download.suggested_filename.endswith(".zip")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    root = saved.stem  # lung-ct-v1-dicom: the archive's one folder
    with zipfile.ZipFile(saved) as archive:
        dataset = json.loads(archive.read(f"{root}/dataset.json"))
        manifest = archive.read(f"{root}/manifest_series.csv").decode()
        dicom_files = [n for n in archive.namelist() if n.endswith(".dcm")]
    series_rows = list(csv.DictReader(io.StringIO(manifest)))
    assert dataset["freeze"]["manifest_sha256"] == shown_hash
    assert len(series_rows) == 6 and len(dicom_files) == frozen["instances"]
    assert Counter(r["label"] for r in series_rows) == {"0": 3, "1": 3}
    status = row.locator(".row-status")
    status.filter(has_text="Downloaded").wait_for()
    assert shown_hash in status.inner_text()
    assert row.locator("progress").evaluate("p => p.value === p.max")
    screenshot(page, "frozen")
    page.context.close()
    assert errors == []


def test_a_bad_definition_is_explained_not_broken(browser: Browser, node: Node) -> None:
    page, errors = open_as(browser, node, "researcher", "/cohorts")
    page.fill("#age-min", "70")
    page.fill("#age-max", "20")
    status = page.locator("#preview-status.error")
    status.wait_for()
    assert "age_min is greater than age_max" in status.inner_text()
    assert "not valid" in status.inner_text()
    page.context.close()
    assert errors == [] or all("422" in e for e in errors)


def test_without_cohorts_write_the_form_is_read_only(
    browser: Browser, node: Node, api_cohort: dict[str, Any]
) -> None:
    with client(node, "researcher") as researcher:
        draft = researcher.post(
            "/api/cohorts", json={"name": "mr-draft", "definition": {"filters": {}}}
        )
        assert draft.status_code == 201
    page, errors = open_as(browser, node, "analyst", "/cohorts")
    assert page.is_visible("#readonly")
    assert "cohorts.write" in page.inner_text("#readonly")
    assert page.is_disabled("#save") and page.is_disabled("#cohort-name")
    page.locator("tr[data-ref='mr-draft@1']").wait_for()
    assert page.locator("button.freeze").count() == 0  # nothing to freeze with
    assert page.inner_text("tr[data-ref='mr-draft@1'] button.load") == "Show in the form"
    # still a reader: the preview follows the form, a frozen cohort downloads
    page.check("#modalities input[value=MR]")
    with client(node, "analyst") as analyst:
        previewed = analyst.post(
            "/api/cohorts/preview", json={"filters": {"modalities": ["MR"]}}
        ).json()
        assert analyst.post("/api/cohorts", json={"name": "x"}).status_code == 403
        assert analyst.post("/api/cohorts/mr-draft@1/freeze").status_code == 403
        assert analyst.get("/api/cohorts/_form").json()["can"] == {
            "write": False,
            "export": True,
        }
    wait_for_counts(page, previewed)
    assert page.locator("tr[data-ref='ct-api@1'] button.download").count() == 1
    screenshot(page, "read-only")
    page.context.close()
    assert errors == []


def test_another_projects_researcher_sees_none_of_its_numbers(
    browser: Browser, node: Node, api_cohort: dict[str, Any]
) -> None:
    page, errors = open_as(browser, node, "researcher_b", "/cohorts")
    wait_for_counts(page, {"patients": 2, "studies": 4, "series": 6, "instances": 14})
    assert "8 series" not in page.inner_text("#modalities")
    assert "CT (2 series)" in page.inner_text("#modalities")
    page.locator("#list-status").filter(has_text="No cohort yet").wait_for()
    assert page.locator("#cohort-list tbody tr").count() == 0
    with client(node, "researcher_b") as other:
        assert other.get("/api/cohorts/ct-api@1/export").status_code == 404
    page.context.close()
    assert errors == []


def test_the_page_speaks_chinese(browser: Browser, node: Node, api_cohort: dict[str, Any]) -> None:
    page, errors = open_as(browser, node, "researcher", "/cohorts?lang=zh")
    page.click("#add-label")
    page.select_option(".label-filter .label-task", TASK)
    assert "恶性：肺癌，或肺转移" in page.inner_text(".label-classes")
    assert "肺结节良恶性" in page.inner_text(".label-task")
    assert "男" in page.inner_text("#sexes") and "门静脉期" in page.inner_text("#sequences")
    with client(node, "researcher") as researcher:
        previewed = researcher.post("/api/cohorts/preview", json=shown_definition(page)).json()
    wait_for_counts(page, previewed)
    assert "随表单修改自动更新" in page.inner_text("#preview-status")
    assert page.inner_text("[data-count=patients] .label") == "患者"
    assert "已冻结" in page.inner_text("tr[data-ref='ct-api@1'] .state")
    # a saved version comes back into the form, to be edited into the next version
    page.click("tr[data-ref='ct-api@1'] button.load")
    assert page.input_value("#cohort-name") == "ct-api"
    loaded = shown_definition(page)
    assert loaded["filters"] == {
        "modalities": ["CT"],
        "labels": [{"task": TASK, "classes": ["1", "0"]}],
    }
    assert loaded["balance"] == {"by": f"label:{TASK}", "mode": "undersample"}
    assert loaded["seed"] == 3 and set(loaded["split"]["fractions"]) == {
        "train",
        "validation",
        "test",
    }
    screenshot(page, "zh")
    page.context.close()
    assert errors == []
