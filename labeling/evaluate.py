"""Evaluation against a gold CSV: precision, recall, F1, macro-F1 and confusion matrices.

The gold file is UTF-8 CSV with the columns ``report_id``, ``report_type`` (radiology or
pathology), ``text`` and one column per task holding the gold class (1, 0, 2 or -1). Other
columns are kept as-is; a ``split`` column lets a run use one part (``--split heldout``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labeling.extract import TaskLabel
from labeling.tasks import CLASSES


class GoldFileError(ValueError):
    """The gold file cannot be read; the message names the file, row or column."""


class LabelExtractor(Protocol):
    def extract(self, text: str, report_type: str = "radiology") -> dict[str, TaskLabel]: ...


@dataclass(frozen=True)
class GoldReport:
    report_id: str
    report_type: str
    text: str
    gold: dict[str, int]
    split: str = ""


@dataclass
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class TaskScores:
    task: str
    classes: dict[int, ClassScores]
    macro_f1: float
    accuracy: float
    confusion: dict[int, dict[int, int]]
    """gold class -> predicted class -> count"""


@dataclass
class Evaluation:
    method: str
    reports: int
    tasks: dict[str, TaskScores] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "reports": self.reports,
            "tasks": {
                name: {
                    "classes": {str(value): vars(scores) for value, scores in task.classes.items()},
                    "macro_f1": task.macro_f1,
                    "accuracy": task.accuracy,
                    "confusion": {
                        str(gold): {str(p): n for p, n in row.items()}
                        for gold, row in task.confusion.items()
                    },
                }
                for name, task in self.tasks.items()
            },
            "predictions": self.predictions,
        }


def read_gold(path: Path, tasks: Sequence[str], split: str | None = None) -> list[GoldReport]:
    """Read a gold CSV; raise :class:`GoldFileError` naming what is wrong."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            required = ["report_id", "report_type", "text", *tasks]
            missing = [c for c in required if c not in columns]
            if missing:
                raise GoldFileError(
                    f"{path}: missing column(s) {', '.join(missing)}; "
                    f"found {', '.join(columns) or 'none'}"
                )
            reports = [_gold_row(path, number, row, tasks) for number, row in enumerate(reader, 2)]
    except FileNotFoundError:
        raise GoldFileError(f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise GoldFileError(f"{path} is not UTF-8 (byte {exc.start})") from None
    if split is not None:
        reports = [r for r in reports if r.split == split]
    if not reports:
        raise GoldFileError(f"{path}: no reports" + (f" in split {split!r}" if split else ""))
    return reports


def _gold_row(path: Path, number: int, row: dict[str, str], tasks: Sequence[str]) -> GoldReport:
    report_type = (row["report_type"] or "").strip().lower()
    if report_type not in ("radiology", "pathology"):
        raise GoldFileError(f"{path} row {number}: report_type must be radiology or pathology")
    if not (row["text"] or "").strip():
        raise GoldFileError(f"{path} row {number}: empty text")
    gold: dict[str, int] = {}
    for task in tasks:
        raw = (row[task] or "").strip()
        value = int(raw) if raw.lstrip("-").isdigit() else None
        if value is None or value not in CLASSES:
            raise GoldFileError(f"{path} row {number}: {task} must be one of 1, 0, 2, -1")
        gold[task] = value
    return GoldReport(row["report_id"], report_type, row["text"], gold, row.get("split") or "")


def evaluate(
    reports: Iterable[GoldReport], extractor: LabelExtractor, tasks: Sequence[str], method: str
) -> Evaluation:
    """Extract each report's labels from its text alone and score them against the gold."""
    pairs: dict[str, list[tuple[int, int]]] = {task: [] for task in tasks}
    evaluation = Evaluation(method, 0)
    for report in reports:
        labels = extractor.extract(report.text, report.report_type)
        evaluation.reports += 1
        prediction: dict[str, Any] = {"report_id": report.report_id}
        for task in tasks:
            predicted = labels[task].value
            pairs[task].append((report.gold[task], predicted))
            prediction[task] = predicted
        evaluation.predictions.append(prediction)
    for task in tasks:
        evaluation.tasks[task] = score(task, pairs[task])
    return evaluation


def score(task: str, pairs: Sequence[tuple[int, int]]) -> TaskScores:
    confusion = {gold: dict.fromkeys(CLASSES, 0) for gold in CLASSES}
    for gold, predicted in pairs:
        confusion[gold][predicted] += 1
    classes: dict[int, ClassScores] = {}
    for value in CLASSES:
        true_positive = confusion[value][value]
        predicted = sum(confusion[g][value] for g in CLASSES)
        support = sum(confusion[value].values())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        classes[value] = ClassScores(round(precision, 3), round(recall, 3), round(f1, 3), support)
    present = [v for v in CLASSES if classes[v].support]
    macro = sum(classes[v].f1 for v in present) / len(present) if present else 0.0
    correct = sum(confusion[v][v] for v in CLASSES)
    accuracy = correct / len(pairs) if pairs else 0.0
    return TaskScores(task, classes, round(macro, 3), round(accuracy, 3), confusion)
