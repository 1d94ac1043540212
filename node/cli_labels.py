"""``pacsnode reports ...`` and ``pacsnode labels ...``: thin commands over :mod:`labeling`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from node.cli_common import (
    ConfigOpt,
    CreateOpt,
    DatabaseOpt,
    DataDirOpt,
    cli_settings,
    command_group,
    err,
    fail,
    out,
    progress_bar,
    use_archive,
)

if TYPE_CHECKING:
    from catalog import Database
    from labeling.evaluate import Evaluation
    from labeling.tasks import TaskSet

reports_app = command_group("Radiology and pathology reports: import RIS / pathology exports.")
labels_app = command_group("Labels derived from reports: evaluate the rules, review, re-extract.")

TasksOpt = Annotated[
    Path | None,
    typer.Option(help="Task definitions (TOML). Default: labeling.tasks_file or the shipped file."),
]


def _tasks(path: Path | None) -> TaskSet:
    from labeling.tasks import TaskFileError, load_tasks

    try:
        return load_tasks(path)
    except TaskFileError as exc:
        raise fail(str(exc)) from None


# ------------------------------------------------------------------------ reports import


@reports_app.command("import")
def import_reports(
    files: Annotated[
        list[Path], typer.Argument(help="CSV or XLSX exports (merged, de-duplicated).")
    ],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    create: CreateOpt = False,
) -> None:
    """Import report exports: de-identify, label and link every report to its study.

    Columns are found by the names in [labeling.columns]. A file with missing columns or an
    unknown encoding is refused whole; a bad row (empty report, bad date) is refused alone.
    Exits with status 1 if anything was refused.
    """
    from rich.table import Table

    from labeling.files import read_exports
    from labeling.intake import ReportRejectedError, ReportStoreError
    from labeling.tasks import TaskFileError
    from node.app import build_core

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    use_archive(settings, create=create)
    read, refused = read_exports(files, settings.labeling)
    for message in refused:
        err.print(f"[red]Error:[/red] {message}", highlight=False, soft_wrap=True)
    good = [row for row in read.rows if row.report is not None]
    rejected = [(row.where, row.error) for row in read.rows if row.report is None]
    counts = {"stored": 0, "already stored": 0}
    if good:
        try:
            core = build_core(settings)
        except TaskFileError as exc:
            raise fail(str(exc)) from None
        try:
            intake = core.report_intake
            with progress_bar() as progress:
                task = progress.add_task("importing reports", total=len(good))
                for row in good:
                    assert row.report is not None
                    try:
                        result = intake.accept(row.report, "file")
                        counts["already stored" if result.duplicate else "stored"] += 1
                    except (ReportRejectedError, ReportStoreError) as exc:
                        rejected.append((row.where, str(exc)))
                    progress.advance(task)
        finally:
            core.close()
    table = Table(title="report import")
    table.add_column("outcome")
    table.add_column("reports", justify="right")
    table.add_row("stored", f"{counts['stored']:,}")
    table.add_row("already stored", f"{counts['already stored']:,}")
    table.add_row("duplicates across the files", f"{read.duplicates:,}")
    table.add_row("refused rows", f"{len(rejected):,}")
    table.add_row("refused files", f"{len(refused):,}")
    if read.merged_ranges:
        table.add_row("merged cell ranges filled (XLSX)", f"{read.merged_ranges:,}")
    out.print(table)
    for where, reason in rejected:
        out.print(f"{where}: {reason}", highlight=False, soft_wrap=True)
    if refused or rejected:
        raise typer.Exit(1)


# ------------------------------------------------------------------------ labels evaluate


def _print_evaluation(evaluation: Evaluation, tasks: TaskSet) -> None:
    from rich.table import Table

    from labeling.tasks import CLASSES

    for name, scores in evaluation.tasks.items():
        table = Table(
            title=f"{name} ({evaluation.method}, {evaluation.reports} reports): "
            f"macro-F1 {scores.macro_f1:.3f}, accuracy {scores.accuracy:.3f}"
        )
        for column in ("class", "meaning", "precision", "recall", "F1", "support"):
            table.add_column(column, justify="left" if column == "meaning" else "right")
        meanings = tasks.tasks[name].meanings()
        for value in CLASSES:
            score = scores.classes[value]
            table.add_row(
                str(value),
                meanings[value][:48],
                f"{score.precision:.3f}",
                f"{score.recall:.3f}",
                f"{score.f1:.3f}",
                str(score.support),
            )
        out.print(table)
        matrix = Table(title=f"{name}: confusion (rows gold, columns predicted)")
        matrix.add_column("gold \\ predicted")
        for value in CLASSES:
            matrix.add_column(str(value), justify="right")
        for gold in CLASSES:
            matrix.add_row(str(gold), *(str(scores.confusion[gold][p]) for p in CLASSES))
        out.print(matrix)


@labels_app.command("evaluate")
def evaluate_command(
    gold: Annotated[
        Path,
        typer.Argument(
            help="UTF-8 CSV: report_id, report_type, text, and one column per task (1/0/2/-1)."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON, with each report's predictions.")
    ] = False,
    method: Annotated[
        str,
        typer.Option(
            help="rules (pacsnode's extractor) or baseline (the reference workflow's plain "
            "fuzzy matching, no negation)."
        ),
    ] = "rules",
    compare: Annotated[
        bool, typer.Option("--compare", help="Also evaluate the baseline, side by side.")
    ] = False,
    split: Annotated[
        str | None, typer.Option(help="Only rows whose 'split' column has this value.")
    ] = None,
    tasks_file: TasksOpt = None,
) -> None:
    """Score label extraction against a gold CSV: precision, recall, F1 per task and class,
    macro-F1 over the classes present, confusion matrices."""
    from labeling.baseline import FuzzyBaseline
    from labeling.evaluate import GoldFileError, evaluate, read_gold
    from labeling.extract import Extractor

    tasks = _tasks(tasks_file)
    if method not in ("rules", "baseline"):
        raise fail("--method must be rules or baseline")
    names = list(tasks.tasks)
    try:
        reports = read_gold(gold, names, split)
    except GoldFileError as exc:
        raise fail(str(exc)) from None
    methods = [method] + (["baseline"] if compare and method != "baseline" else [])
    results = []
    for name in methods:
        extractor = Extractor(tasks) if name == "rules" else FuzzyBaseline(tasks)
        results.append(evaluate(reports, extractor, names, name))
    if as_json:
        document: dict[str, Any] = results[0].as_dict()
        document["rules_version"] = tasks.version
        if len(results) > 1:
            document["compared_with"] = results[1].as_dict()
        out.print_json(json.dumps(document, ensure_ascii=False))
        return
    for evaluation in results:
        _print_evaluation(evaluation, tasks)
    if len(results) > 1:
        from rich.table import Table

        summary = Table(title="macro-F1 per task")
        summary.add_column("task")
        for evaluation in results:
            summary.add_column(evaluation.method, justify="right")
        for name in names:
            summary.add_row(name, *(f"{e.tasks[name].macro_f1:.3f}" for e in results))
        out.print(summary)


# ------------------------------------------------------------------------ labels review


@labels_app.command("review")
def review_command(
    label_id: Annotated[
        int | None,
        typer.Argument(
            help="A study label to decide on; omit to list the queue.", min=1, max=2**63 - 1
        ),
    ] = None,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="Keep the label's class, confirmed by you.")
    ] = False,
    set_value: Annotated[
        int | None, typer.Option("--set", help="Override the class (1, 0, 2 or -1).")
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", help="Your name, kept with the decision.")
    ] = None,
    note: Annotated[str | None, typer.Option(help="Why, kept with the decision.")] = None,
    limit: Annotated[
        int, typer.Option(help="How many labels to list (1 to 1000).", min=1, max=1000)
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """List the labels waiting for review, or confirm / override one (who and when are kept;
    re-extraction never undoes it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from catalog import Database
    from catalog.models import Label
    from labeling.labels import ReviewError, apply_review

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    use_archive(settings)
    db = Database(settings.catalog_url)
    try:
        if label_id is None:
            _list_review(db, limit, as_json)
            return
        if confirm == (set_value is not None):
            raise fail("give either --confirm or --set VALUE")
        if not by:
            raise fail("--by NAME is required: a decision keeps who made it")
        with db.write() as session:
            label = session.get(Label, label_id)
            if label is None:
                raise fail(f"no label {label_id}")
            apply_review(label, reviewer=by, value=set_value, note=note)
            value, status = label.effective_value, label.review_status
        out.print(f"label {label_id}: {status}, class {value}, by {by}", highlight=False)
    except ReviewError as exc:
        raise fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise fail(f"catalog unavailable at {db.describe()} ({type(exc).__name__})") from None
    finally:
        db.dispose()


def _list_review(db: Database, limit: int, as_json: bool) -> None:
    from rich.table import Table
    from sqlalchemy import select

    from catalog.models import Label, Study

    with db.read() as session:
        rows = session.execute(
            select(Label, Study.study_instance_uid)
            .join(Study, Study.id == Label.study_pk)
            .where(Label.needs_review.is_(True))
            .order_by(Label.confidence, Label.id)
            .limit(limit)
        ).all()
        items = [
            {
                "id": label.id,
                "study_instance_uid": uid,
                "task": label.task,
                "value": label.effective_value,
                "confidence": label.confidence,
                "reason": label.review_reason,
                "evidence": label.span_text,
                "rule": label.rule,
            }
            for label, uid in rows
        ]
    if as_json:
        out.print_json(json.dumps({"labels": items}, ensure_ascii=False))
        return
    table = Table(title=f"labels to review ({len(items)})")
    for column in ("id", "study", "task", "class", "confidence", "why", "evidence"):
        table.add_column(column)
    for item in items:
        table.add_row(
            str(item["id"]),
            str(item["study_instance_uid"]),
            str(item["task"]),
            str(item["value"]),
            f"{item['confidence']:.2f}",
            str(item["reason"] or ""),
            str(item["evidence"] or ""),
        )
    out.print(table)


@labels_app.command("reextract")
def reextract_command(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Extract every stored report's labels again with the current task file (after a rule
    change). People's confirmations and overrides are kept."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from catalog.models import Report
    from labeling.tasks import TaskFileError
    from node.app import build_core

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    use_archive(settings)
    try:
        core = build_core(settings)
    except TaskFileError as exc:
        raise fail(str(exc)) from None
    try:
        with core.db.read() as session:
            total = len(session.scalars(select(Report.id)).all())
        done = 0
        with progress_bar() as progress:
            task = progress.add_task("re-extracting", total=total)
            for count in core.report_intake.reextract():
                done += count
                progress.advance(task, count)
    except SQLAlchemyError as exc:
        raise fail(f"catalog unavailable ({type(exc).__name__})") from None
    finally:
        core.close()
    out.print(f"{done:,} reports re-extracted with rules {core.report_intake.tasks.version}")
