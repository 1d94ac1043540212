"""``pacsnode audit ...``: read the audit trail, and export it as JSON lines or DICOM audit
messages (PS3.15 A.5)."""

from __future__ import annotations

import json
import socket
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer

from node.cli_common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    JsonOpt,
    cli_settings,
    command_group,
    fail,
    out,
    progress_bar,
    use_archive,
)

audit_app = command_group(
    "The audit trail: who did what, when, from where, to which studies (admin only). "
    "Every association, store, query, retrieve, export, re-identification, quarantine "
    "decision, login and credential change is an event; none can be changed or removed."
)

SinceOpt = Annotated[
    datetime | None, typer.Option("--since", help="From this time (ISO 8601, UTC if no zone).")
]
UntilOpt = Annotated[datetime | None, typer.Option("--until", help="Before this time.")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="Only this actor.")]
ActionOpt = Annotated[
    str | None,
    typer.Option("--action", help="Only this action (association, store, query, retrieve...)."),
]
OutcomeOpt = Annotated[
    str | None, typer.Option("--outcome", help="Only this outcome (ok, refused, failed...).")
]
DoorOpt = Annotated[str | None, typer.Option("--door", help="Only this door (dimse, http, cli).")]
StudyOpt = Annotated[
    str | None, typer.Option("--study", help="Only events concerning this stored Study UID.")
]


@audit_app.command("list")
def audit_list(
    since: SinceOpt = None,
    until: UntilOpt = None,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    outcome: OutcomeOpt = None,
    door: DoorOpt = None,
    study: StudyOpt = None,
    before: Annotated[
        int | None, typer.Option("--before", help="Page back: events older than this id.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="At most this many events.")
    ] = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """The newest events matching every filter given (page back with --before)."""
    from api.audit import event_json
    from catalog.audit import AuditFilter, read_audit
    from catalog.db import Database

    settings = cli_settings(config, data_dir, database_url)
    use_archive(settings)
    where = AuditFilter(since, until, actor, action, outcome, door, study, before_id=before)
    db = Database(settings.catalog_url)
    try:
        db.migrate()
        with db.read() as session:
            events = read_audit(session, where, limit=limit)
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps([event_json(event) for event in events]))
        return
    from rich.table import Table

    table = Table("id", "at (UTC)", "actor", "action", "outcome", "door", "remote", "target")
    for event in events:
        studies = f" ({len(event.studies)} studies)" if event.studies else ""
        table.add_row(
            str(event.id),
            event.at.strftime("%Y-%m-%d %H:%M:%S"),
            event.actor,
            event.action,
            event.outcome,
            event.door,
            event.remote,
            event.target + studies,
        )
    out.print(table)
    if len(events) == limit:
        out.print(f"older events: --before {events[-1].id}", highlight=False, markup=False)


@audit_app.command("export")
def audit_export(
    output: Annotated[
        Path,
        typer.Argument(
            help="File of JSON lines, or folder of DICOM audit messages (one XML per event)."
        ),
    ],
    format_name: Annotated[
        Literal["jsonl", "dicom"],
        typer.Option("--format", help="jsonl, or dicom: PS3.15 A.5 audit messages."),
    ] = "jsonl",
    since: SinceOpt = None,
    until: UntilOpt = None,
    action: ActionOpt = None,
    study: StudyOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Every event matching the filters, oldest first, with a progress bar."""
    from api.audit import event_json
    from audit.dicom_xml import audit_message
    from catalog.audit import AuditFilter, read_audit
    from catalog.db import Database

    settings = cli_settings(config, data_dir, database_url)
    use_archive(settings)
    db = Database(settings.catalog_url)
    hostname = socket.gethostname()
    written = 0
    try:
        db.migrate()
        if format_name == "dicom":
            output.mkdir(parents=True, exist_ok=True)
        elif output.is_dir():
            raise fail(f"{output} is a folder: give a file for --format jsonl")
        with (
            progress_bar() as progress,
            output.open("w") if format_name == "jsonl" else nullcontext() as lines,
        ):
            task = progress.add_task("exporting", total=None)
            after = 0
            while True:
                where = AuditFilter(since, until, action=action, study=study, after_id=after)
                with db.read() as session:
                    page = read_audit(session, where, limit=1000, newest_first=False)
                if not page:
                    break
                for event in page:
                    if lines is not None:
                        lines.write(json.dumps(event_json(event), ensure_ascii=False) + "\n")
                    else:
                        xml = audit_message(event, settings.audit, settings.ae_title, hostname)
                        (output / f"{event.id:012d}.xml").write_bytes(xml)
                written += len(page)
                after = page[-1].id or after
                progress.update(task, advance=len(page))
    finally:
        db.dispose()
    out.print(f"{written} events written to {output}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the ``pacsnode`` command line."""
    app.add_typer(audit_app, name="audit")
