"""The JSON the Studies and Label review pages read: ``GET /api/studies`` (QIDO-RS matching
plus the Overview's filters, paged, counted, scoped), ``GET /api/labels/reviewed``,
``GET /api/labels/tasks``, the evidence offsets of ``GET /api/reports/{id}`` and a review
recorded under the caller's name.

The filters' SQL is checked on SQLite and PostgreSQL against the catalog itself (``core``);
the routes on one running node per module (SQLite) with password logins.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from catalog.facets import FacetError, StudyFacets
from catalog.models import Label, Patient, Study
from catalog.query import QueryLevel, count_query, parse_query, run_query
from labeling.tasks import DEFAULT_TASKS_FILE, load_tasks
from node.app import Core, Node
from tests.dashboard_data import EXAMS, PASSWORD, labelled_node, load, stored_patient_ids

UID = "0020000D"


def uid_of(row: dict[str, Any]) -> str:
    return str(row[UID]["Value"][0])


# ------------------------------------------------------------------ the SQL, both databases


def matching(core: Core, facets: StudyFacets, **keys: str) -> set[str]:
    query = parse_query(QueryLevel.STUDY, keys)
    query = replace(query, where=facets.conditions())
    rows = run_query(core.db, query).rows
    assert count_query(core.db, query) == len(rows)
    return {uid_of(row) for row in rows}


def test_each_filter_selects_the_studies_the_catalog_says(core: Core) -> None:
    load(core)
    with core.db.read() as session:
        studies = session.execute(
            select(Study.study_instance_uid, Patient.patient_id, Study.study_date)
            .join(Patient, Patient.id == Study.patient_pk)
            .order_by(Study.id)
        ).all()
        malignant = set(
            session.scalars(
                select(Study.study_instance_uid)
                .join(Label, Label.study_pk == Study.id)
                .where(Label.task == "pancreatic_cancer", Label.value == 1)
            )
        )
    by_exam = {exam.patient: uid for exam, (uid, _, _) in zip(EXAMS, studies, strict=True)}
    everything = set(by_exam.values())
    assert matching(core, StudyFacets()) == everything

    def exams(*names: str) -> set[str]:
        return {by_exam[name] for name in names}

    assert matching(core, StudyFacets.parse(modality="MR")) == exams("PA-2", "PB-2")
    assert matching(core, StudyFacets.parse(sex="f")) == exams("PA-1", "PA-3", "PB-2")
    assert matching(core, StudyFacets.parse(age="40-49")) == exams("PA-1", "PB-1")
    assert matching(core, StudyFacets.parse(age="60-79")) == exams("PA-2", "PA-4")
    assert matching(core, StudyFacets.parse(age="0-9")) == set()
    pancreas = StudyFacets.parse(task="pancreatic_cancer", value="1")
    assert matching(core, pancreas) == malignant == exams("PA-4", "PB-1")
    assert matching(core, StudyFacets.parse(task="liver_cancer")) == everything  # any class
    not_addressed = StudyFacets.parse(task="liver_cancer", value="-1")
    assert matching(core, not_addressed) == exams("PA-1", "PA-4", "PB-1")
    assert matching(core, StudyFacets.parse(source="MOD_B")) == exams("PB-1", "PB-2")
    assert matching(core, StudyFacets.parse(source="stow")) == exams("PA-3")
    day = studies[0].study_date  # dates are stored shifted: the month of PA-1's
    month = f"{day[:4]}-{day[4:6]}"
    assert by_exam["PA-1"] in matching(core, StudyFacets.parse(month=month))
    assert all(
        d[:6] == day[:6]
        for u, _, d in studies
        if u in matching(core, StudyFacets.parse(month=month))
    )
    # together with QIDO keys, and with each other
    assert matching(core, StudyFacets.parse(sex="M", modality="CT"), ModalitiesInStudy="CT") == (
        exams("PA-4", "PB-1")
    )
    assert matching(core, StudyFacets.parse(age="40-49"), PatientID=studies[4].patient_id) == (
        exams("PB-1")
    )
    scoped = parse_query(QueryLevel.STUDY, {})
    scoped = replace(
        scoped, projects=frozenset({"b"}), where=StudyFacets.parse(sex="M").conditions()
    )
    assert {uid_of(r) for r in run_query(core.db, scoped).rows} == exams("PB-1")
    assert count_query(core.db, scoped) == 1


def test_without_patients_age_the_age_comes_from_the_birth_date(core: Core) -> None:
    load(core)
    with core.db.write() as session:
        study, patient = session.execute(
            select(Study, Patient).join(Patient, Patient.id == Study.patient_pk).limit(1)
        ).one()
        day = str(study.study_date)
        study.patient_age = None  # born 45 years before the exam's year, on 31 December
        patient.patient_birth_date = f"{int(day[:4]) - 45}1231"
        uid = study.study_instance_uid
    assert uid in matching(core, StudyFacets.parse(age="40-44"))
    assert uid not in matching(core, StudyFacets.parse(age="45-49"))


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"age": "forty"}, "age"),
        ({"age": "50-40"}, "age"),
        ({"month": "2024-13"}, "month"),
        ({"value": "5", "task": "t"}, "class"),
        ({"value": "1"}, "class"),
        ({"modality": "C'T"}, "modality"),
    ],
)
def test_a_bad_filter_is_named(given: dict[str, str], named: str) -> None:
    with pytest.raises(FacetError, match=f"^{named}:"):
        StudyFacets.parse(**given)


# ------------------------------------------------------------------------------ the routes


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with labelled_node(tmp_path_factory.mktemp("studies-api")) as running:
        yield running


@contextmanager
def client(node: Node, user: str) -> Iterator[httpx.Client]:
    """An HTTP client logged in as ``user`` (closed after)."""
    base = f"http://127.0.0.1:{node.http_port}"  # changes must come from the node's origin
    with httpx.Client(base_url=base, headers={"Origin": base}, timeout=30) as logged_in:
        answer = logged_in.post("/login", data={"username": user, "password": PASSWORD})
        assert answer.status_code == 303
        yield logged_in


def studies(node: Node, user: str, **params: Any) -> dict[str, Any]:
    with client(node, user) as session:
        answer = session.get("/api/studies", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_list_is_qidos_rows_with_a_total_and_labels(node: Node) -> None:
    patients = stored_patient_ids(node.core)
    answer = studies(node, "admin")
    assert answer["total"] == len(EXAMS) == len(answer["studies"])
    with client(node, "admin") as session:
        qido = session.get("/dicom-web/studies", params={"includefield": "PatientAge"}).json()
    for ours, theirs in zip(answer["studies"], qido, strict=True):
        theirs.pop("00081190")  # the RetrieveURL is QIDO-RS's own
        assert ours == theirs
    for row in answer["studies"]:
        assert row["00100020"]["Value"] == [patients[uid_of(row)]]
    labelled = {uid: labels for uid, labels in answer["labels"].items() if labels}
    assert len(labelled) == 6 and all("PA-" not in p for p in patients.values())


def test_a_caller_of_one_project_sees_none_of_the_other(node: Node) -> None:
    everything = {uid_of(row) for row in studies(node, "admin")["studies"]}
    alice = studies(node, "alice", limit=500)
    bob = studies(node, "bob", limit=500)
    mine = {uid_of(row) for row in alice["studies"]}
    theirs = {uid_of(row) for row in bob["studies"]}
    assert (alice["total"], bob["total"]) == (4, 2)
    assert mine | theirs == everything and not mine & theirs
    assert set(alice["labels"]) == mine
    assert studies(node, "alice", source="MOD_B")["total"] == 0
    assert studies(node, "bob", task="pancreatic_cancer", **{"class": "1"})["total"] == 1
    for row in alice["studies"]:
        assert studies(node, "bob", PatientID=row["00100020"]["Value"][0])["studies"] == []


def test_filters_and_paging(node: Node) -> None:
    assert studies(node, "admin", modality="MR")["total"] == 2
    assert studies(node, "admin", ModalitiesInStudy="MR", sex="F")["total"] == 1
    assert studies(node, "admin", age="40-49", task="pancreatic_cancer")["total"] == 2
    assert studies(node, "admin", StudyDescription="ct*")["total"] == 4  # QIDO's matching
    pages = [studies(node, "admin", limit=4, offset=offset) for offset in (0, 4)]
    assert [len(p["studies"]) for p in pages] == [4, 2] and pages[1]["total"] == 6
    seen = [uid_of(row) for page in pages for row in page["studies"]]
    assert seen == [uid_of(row) for row in studies(node, "admin")["studies"]]


@pytest.mark.parametrize(
    "params",
    [{"age": "old"}, {"class": "1"}, {"month": "March"}, {"StudyDate": "yesterday"}, {"limit": 0}],
)
def test_a_bad_parameter_is_refused(node: Node, params: dict[str, Any]) -> None:
    with client(node, "admin") as session:
        answer = session.get("/api/studies", params=params)
    assert answer.status_code in (400, 422), answer.text


def test_a_viewer_gets_studies_but_no_labels(node: Node) -> None:
    answer = studies(node, "reader")
    assert answer["total"] == 6 and answer["labels"] is None
    with client(node, "reader") as session:
        assert session.get("/api/labels/reviewed").status_code == 403
        assert session.get("/api/labels/tasks").status_code == 403


def test_tasks_have_meanings_in_both_languages(node: Node) -> None:
    with client(node, "alice") as session:
        tasks = session.get("/api/labels/tasks").json()["tasks"]
    assert {t["name"] for t in tasks} >= {"pancreatic_cancer", "liver_cancer"}
    for task in tasks:
        assert task["description"]["en"] and task["description"]["zh"]
        assert [c["value"] for c in task["classes"]] == [1, 0, 2, -1]
        for label_class in task["classes"]:
            assert label_class["meaning"]["en"].isascii()
            assert any("\u4e00" <= ch <= "\u9fff" for ch in label_class["meaning"]["zh"])


def test_report_labels_say_where_their_evidence_is(node: Node) -> None:
    with client(node, "admin") as session:
        [row] = studies(node, "admin", task="liver_cancer", **{"class": "0"})["studies"]
        study = session.get(f"/api/studies/{uid_of(row)}/labels").json()
        [report] = study["reports"]
        stored = session.get(f"/api/reports/{report['report_id']}").json()
    text = unicodedata.normalize(
        "NFKC", "\n".join(p for p in (stored["findings"], stored["impression"]) if p)
    ).lower()
    spans = {
        label["task"]: text[label["span_start"] : label["span_end"]]
        for label in stored["labels"]
        if label["span_start"] is not None
    }
    assert spans["liver_cancer"] == "liver cyst"
    assert spans["pancreatic_cancer"] == "pancreatic mass"  # negated: "no pancreatic mass"


def test_reviews_are_listed_with_who_made_them(node: Node) -> None:
    with client(node, "alice") as alice:
        waiting = alice.get("/api/labels/review").json()["labels"]
        assert len(waiting) == 2  # of project a; b has one too
        confirmed = alice.put(f"/api/labels/{waiting[0]['id']}", json={"value": None})
        assert confirmed.status_code == 200 and confirmed.json()["reviewed_by"] == "user:alice"
        changed = alice.put(f"/api/labels/{waiting[1]['id']}", json={"value": 0, "note": "n"})
        assert changed.json()["review_status"] == "overridden"
        reviewed = alice.get("/api/labels/reviewed").json()
    assert reviewed["total"] == 2
    assert [r["id"] for r in reviewed["labels"]] == [waiting[1]["id"], waiting[0]["id"]]
    assert {r["reviewed_by"] for r in reviewed["labels"]} == {"user:alice"}
    assert reviewed["labels"][0]["value"] == 0 and reviewed["labels"][0]["review_note"] == "n"
    with client(node, "bob") as bob:
        assert bob.get("/api/labels/reviewed").json() == {"total": 0, "labels": []}
        [theirs] = bob.get("/api/labels/review").json()["labels"]
        bob.put(f"/api/labels/{theirs['id']}", json={"reviewer": "Dr. B", "value": None})
        assert [r["reviewed_by"] for r in bob.get("/api/labels/reviewed").json()["labels"]] == [
            "Dr. B"
        ]
    with client(node, "admin") as admin:
        assert (
            admin.get("/api/labels/reviewed", params={"reviewer": "user:alice"}).json()["total"]
            == 2
        )
        assert admin.get("/api/labels/reviewed", params={"limit": 1}).json()["total"] == 3
    with node.core.db.read() as session:
        stored = session.scalars(select(Label).where(Label.id == waiting[1]["id"])).one()
        assert (stored.override_value, stored.reviewed_by) == (0, "user:alice")


def test_chinese_meanings_are_optional_in_a_task_file(tmp_path: Path) -> None:
    text = "\n".join(
        line
        for line in DEFAULT_TASKS_FILE.read_text("utf-8").splitlines()
        if not line.startswith(("meaning_zh", "description_zh"))
    )
    (tmp_path / "tasks.toml").write_text(text, "utf-8")
    assert load_tasks(tmp_path / "tasks.toml").tasks["liver_cancer"].classes[1].meaning_zh == ""
