"""``pacsnode labels evaluate`` on the project's own gold set, against the reference method.

The gold set (tests/data/gold_reports.csv, 330 reports) was written before the rules; the
rules were then tuned on its ``dev`` split only. The ``heldout`` split is what these
thresholds are about.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labeling.baseline import FuzzyBaseline
from labeling.evaluate import GoldFileError, evaluate, read_gold, score
from labeling.extract import Extractor
from labeling.tasks import load_tasks
from node.cli import app

GOLD = Path(__file__).parent / "data" / "gold_reports.csv"
TASKS = load_tasks()
NAMES = list(TASKS.tasks)
runner = CliRunner()


def test_the_gold_set_is_big_varied_and_split() -> None:
    reports = read_gold(GOLD, NAMES)
    assert len(reports) >= 300
    assert {r.split for r in reports} == {"dev", "heldout"}
    assert {r.report_type for r in reports} == {"radiology", "pathology"}
    chinese = sum(any("\u4e00" <= c <= "\u9fff" for c in r.text) for r in reports)
    assert 100 <= chinese <= len(reports) - 100
    for task in NAMES:
        assert {r.gold[task] for r in reports} == {1, 0, 2, -1}, task


def test_held_out_figures_beat_the_reference_method() -> None:
    heldout = read_gold(GOLD, NAMES, "heldout")
    rules = evaluate(heldout, Extractor(TASKS), NAMES, "rules")
    baseline = evaluate(heldout, FuzzyBaseline(TASKS), NAMES, "baseline")
    for task in NAMES:
        assert rules.tasks[task].macro_f1 >= 0.9, task
        assert rules.tasks[task].macro_f1 >= baseline.tasks[task].macro_f1 + 0.2, task


def test_scores_follow_their_definitions() -> None:
    scores = score("t", [(1, 1), (1, 0), (0, 0), (0, 0), (2, 1), (-1, -1)])
    assert scores.classes[1].precision == 0.5  # 2 predicted 1, one right
    assert scores.classes[1].recall == 0.5  # 2 gold 1, one found
    assert scores.classes[0].precision == pytest.approx(0.667, abs=0.001)
    assert scores.classes[0].recall == 1.0
    assert scores.classes[2].f1 == 0.0
    assert scores.confusion[2][1] == 1
    # macro over the classes present in the gold (all four here)
    expected = (0.5 + 0.8 + 0.0 + 1.0) / 4
    assert scores.macro_f1 == pytest.approx(expected, abs=0.001)


def test_cli_prints_tables_and_the_comparison() -> None:
    result = runner.invoke(
        app, ["labels", "evaluate", str(GOLD), "--split", "heldout", "--compare"]
    )
    assert result.exit_code == 0, result.output
    assert "confusion" in result.output
    assert "macro-F1 per task" in result.output
    assert "baseline" in result.output


def test_cli_json_has_scores_confusion_and_predictions() -> None:
    result = runner.invoke(app, ["labels", "evaluate", str(GOLD), "--json", "--compare"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["method"] == "rules"
    assert document["reports"] == len(read_gold(GOLD, NAMES))
    assert len(document["predictions"]) == document["reports"]
    first = document["predictions"][0]
    assert set(first) == {"report_id", *NAMES}
    task = document["tasks"]["pancreatic_cancer"]
    assert set(task["classes"]) == {"1", "0", "2", "-1"}
    assert set(task["classes"]["1"]) == {"precision", "recall", "f1", "support"}
    assert sum(sum(row.values()) for row in task["confusion"].values()) == document["reports"]
    assert document["compared_with"]["method"] == "baseline"


def test_cli_baseline_method_alone() -> None:
    result = runner.invoke(app, ["labels", "evaluate", str(GOLD), "--json", "--method", "baseline"])
    assert result.exit_code == 0
    assert json.loads(result.output)["method"] == "baseline"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("report_id,text\n1,x\n", "missing column(s) report_type, pancreatic_cancer"),
        (
            "report_id,report_type,text,pancreatic_cancer,breast_cancer,lung_nodule,liver_cancer\n"
            "1,radiology,ok,7,0,0,0\n",
            "row 2: pancreatic_cancer must be one of",
        ),
        (
            "report_id,report_type,text,pancreatic_cancer,breast_cancer,lung_nodule,liver_cancer\n"
            "1,radiology,  ,0,0,0,0\n",
            "row 2: empty text",
        ),
        (
            "report_id,report_type,text,pancreatic_cancer,breast_cancer,lung_nodule,liver_cancer\n"
            "1,cardiology,x,0,0,0,0\n",
            "row 2: report_type must be",
        ),
    ],
)
def test_bad_gold_files_are_named_with_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "gold.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GoldFileError, match=r"gold\.csv"):
        read_gold(path, NAMES)
    result = runner.invoke(app, ["labels", "evaluate", str(path)])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert message in result.output.replace("\n", "")


def test_a_gold_file_not_in_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gold.csv"
    path.write_bytes(
        "report_id,report_type,text,pancreatic_cancer,breast_cancer,lung_nodule,liver_cancer\n"
        "1,radiology,胰腺癌,1,-1,-1,-1\n".encode("gb18030")
    )
    result = runner.invoke(app, ["labels", "evaluate", str(path)])
    assert result.exit_code == 1
    assert "not UTF-8" in result.output
