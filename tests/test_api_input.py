"""What the ``/api`` routes do with input nobody meant: a misspelled key is refused (422
naming it), never ignored; an id that is too large, negative or written in other digits is a
400 or 404 with a reason, never a 500. One running node for the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from config import load_settings
from node.app import Node
from node.cli import app

HUGE = "99999999999999999999999"
DIGITS_5000 = "9" * 5000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("api-input") / "data",
        fsync=False,
        dicom_port=0,
        http_port=0,
    )
    running = Node(settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def api(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}/api"


def call(method: str, url: str, body: Any = None) -> requests.Response:
    return requests.request(method, url, json=body, timeout=30)


def named_keys(answer: requests.Response) -> str:
    """Every key the 422 names, whatever the shape of its ``detail``."""
    detail = answer.json()["detail"]
    return json.dumps(detail) if not isinstance(detail, str) else detail


# ------------------------------------------------------------------------------ unknown keys


def cohort(definition: dict[str, Any]) -> dict[str, Any]:
    return {"name": "a", "definition": definition}


def test_a_misspelled_cohort_key_is_refused_and_no_cohort_is_made(api: str) -> None:
    """``definiton`` once gave 201 and a cohort with no filter: it matched everything."""
    answer = call("POST", f"{api}/cohorts", {"name": "lungs", "definiton": {"seed": 1}})
    assert answer.status_code == 422
    assert "definiton" in named_keys(answer)
    assert call("GET", f"{api}/cohorts/lungs").status_code == 404
    assert all(c["name"] != "lungs" for c in call("GET", f"{api}/cohorts").json())


@pytest.mark.parametrize(
    ("method", "path", "body", "key"),
    [
        ("POST", "/cohorts", {"name": "a", "definition": {"filterz": {}}}, "filterz"),
        ("POST", "/cohorts", cohort({"filters": {"modality": ["CT"]}}), "modality"),
        ("POST", "/cohorts", cohort({"balance": {"by": "sex", "mod": "cap"}}), "mod"),
        ("POST", "/cohorts", {"name": "a", "descripton": "x"}, "descripton"),
        ("POST", "/cohorts/preview", {"filters": {"sex": ["F"]}}, "sex"),
        ("POST", "/reports", {"patient_id": "PAT-1", "findngs": "no mass"}, "findngs"),
        ("PUT", "/labels/1", {"reviewer": "Dr. Li", "valu": 1}, "valu"),
        ("PUT", "/reports/1/labels/pancreatic_cancer", {"reviwer": "Dr. Li"}, "reviwer"),
    ],
)  # fmt: skip
def test_every_body_refuses_an_unknown_key_by_name(
    api: str, method: str, path: str, body: dict[str, Any], key: str
) -> None:
    answer = call(method, f"{api}{path}", body)
    assert answer.status_code == 422, answer.text
    assert key in named_keys(answer)


def test_cli_define_refuses_an_unknown_key_in_its_file(node: Node, tmp_path: Path) -> None:
    where = ["--data-dir", str(node.settings.data_dir)]
    runner = CliRunner()
    for document, named in (
        ({"name": "x", "definiton": {}, "definition": {"seed": 1}}, "'definiton'"),
        ({"filters": {"modalitiez": ["CT"]}}, "modalitiez"),
        ([{"filters": {}}], "no JSON object"),
    ):
        path = tmp_path / "definition.json"
        path.write_text(json.dumps(document))
        result = runner.invoke(app, ["cohort", "define", "typo", "--file", str(path), *where])
        assert result.exit_code == 1, result.output
        assert named in " ".join(result.stderr.split())
        assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ bad ids


BAD_PATHS = [
    ("GET", f"/reports/{HUGE}", 404),
    ("GET", f"/reports/{DIGITS_5000}", 404),
    ("GET", "/reports/-1", 400),
    ("GET", "/reports/%C2%B2", 400),  # superscript two: str.isdigit() says yes, int() no
    ("GET", "/reports/%D9%A1%D9%A2", 400),  # Arabic-Indic 12: int() takes it
    ("PUT", f"/labels/{HUGE}", 404),
    ("PUT", "/labels/%C2%B2", 400),
    ("PUT", f"/reports/{HUGE}/labels/pancreatic_cancer", 404),
    ("GET", f"/cohorts/{DIGITS_5000}", 404),
    ("GET", f"/cohorts/{HUGE}", 404),
    ("GET", f"/cohorts/x@{HUGE}", 404),
    ("GET", "/cohorts/x@%C2%B2", 404),
    ("GET", "/cohorts/%C2%B2", 404),
    ("GET", "/cohorts/-5", 404),
    ("GET", f"/cohorts/{HUGE}/preview", 404),
    ("POST", f"/cohorts/{HUGE}/freeze", 404),
    ("GET", f"/cohorts/x@{HUGE}/export", 404),
]


@pytest.mark.parametrize(
    ("method", "path", "status"), BAD_PATHS, ids=[p[:40] for _, p, _ in BAD_PATHS]
)
def test_an_id_no_row_can_have_is_a_4xx_with_a_reason(
    api: str, method: str, path: str, status: int
) -> None:
    body = {"reviewer": "Dr. Li"} if method == "PUT" else None
    answer = call(method, f"{api}{path}", body)
    assert answer.status_code == status, answer.text[:300]
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail
    assert len(answer.content) < 500  # a 5,000-digit id is not sent back whole


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"seed": 10**30}, "seed"),
        ({"filters": {"min_instances": 10**30}}, "min_instances"),
        ({"filters": {"age_min": 1e308}}, "age_min"),
        ({"balance": {"by": "sex", "mode": "cap", "cap": 10**30}}, "cap"),
        ({"split": {"fractions": {"train": float("nan"), "test": 1.0}}}, "fractions"),
    ],
)
def test_numbers_the_catalog_cannot_compare_are_refused_when_defined(
    api: str, definition: dict[str, Any], field: str
) -> None:
    """A cohort with ``min_instances`` 10^30 was saved, and every preview of it was a 500."""
    body = json.dumps({"name": "big", "definition": definition}, allow_nan=True)
    answer = requests.post(
        f"{api}/cohorts", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"]


@pytest.mark.parametrize(
    "args",
    [["labels", "review", HUGE, "--set", "1", "--by", "x"], ["labels", "review", "--limit", HUGE]],
)
def test_the_cli_refuses_an_id_no_row_can_have(node: Node, args: list[str]) -> None:
    """Both reached SQLite and ended in an OverflowError traceback."""
    result = CliRunner().invoke(app, [*args, "--data-dir", str(node.settings.data_dir)])
    assert result.exit_code == 2, result.output
    assert "less than or equal to" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
