"""``pacsnode send``, ``pacsnode orthanc pull`` and ``pacsnode jobs list``: sending studies to
DICOM peers, pulling from the hospital's Orthanc, and the scheduler's jobs.

Registered by :mod:`node.cli` (it imports this module after defining its shared helpers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from node.cli import app
from node.cli_common import (
    ConfigOpt,
    CreateOpt,
    DatabaseOpt,
    DataDirOpt,
    cli_settings,
    command_group,
    configure_logging,
    err,
    fail,
    out,
    progress_bar,
    use_archive,
)

if TYPE_CHECKING:
    from catalog import RetrieveKeys, StoredInstance
    from node.app import Core

orthanc_app = command_group("Work with the hospital's Orthanc (the source of the sync job).")
jobs_app = command_group("The scheduler's jobs (Orthanc sync, ...).")
app.add_typer(orthanc_app, name="orthanc")
app.add_typer(jobs_app, name="jobs")


@app.command()
def send(
    to: Annotated[
        str, typer.Option("--to", help="AE title of the destination, as listed in qr.destinations.")
    ],
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="Stored Study Instance UID to send (repeatable)."),
    ] = None,
    series: Annotated[
        list[str] | None,
        typer.Option("--series", help="Stored Series Instance UID to send (repeatable)."),
    ] = None,
    studies_from: Annotated[
        Path | None,
        typer.Option("--studies-from", help="A file of stored Study Instance UIDs, one a line."),
    ] = None,
    cohort: Annotated[
        str | None,
        typer.Option(
            "--cohort",
            help="A frozen cohort (id, name or name@version): the instances its freeze pinned.",
        ),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Send stored studies, series or a frozen cohort to a configured DICOM destination
    (C-STORE), as stored (de-identified).

    Works while the node runs. Exits with status 1 if any instance was not sent.
    """
    from node.app import build_core
    from scp.send import SendError, send_instances

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("ERROR")
    destination = settings.qr.destination(to)
    if destination is None:
        known = ", ".join(d.ae_title for d in settings.qr.destinations) or "none"
        raise fail(f"{to!r} is not in qr.destinations (configured: {known})")
    if cohort is not None and (study or series or studies_from):
        raise fail("give either a cohort or studies/series, not both")
    keys = None if cohort is not None else _send_keys(study or [], series or [], studies_from)
    use_archive(settings)
    core = build_core(settings)
    try:
        instances = _instances_to_send(core, keys or _cohort_keys(core, str(cohort)))
        with progress_bar() as progress:
            task = progress.add_task(f"sending to {destination.ae_title}", total=len(instances))
            report = send_instances(
                instances,
                destination,
                core.blobs,
                calling_aet=settings.ae_title,
                timeout=settings.qr.send_timeout,
                on_sent=lambda _: progress.advance(task),
            )
    except SendError as exc:
        raise fail(f"nothing sent: {exc}") from None
    finally:
        core.close()
    out.print(
        f"sent {report.completed + report.warnings} of {len(instances)} instances to "
        f"{destination.ae_title} ({report.warnings} with warnings, {len(report.failed)} failed)",
        highlight=False,
        soft_wrap=True,
    )
    for uid in report.failed:
        out.print(f"not sent: {uid}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def _send_keys(studies: list[str], series: list[str], studies_from: Path | None) -> RetrieveKeys:
    from catalog import RetrieveKeys

    if studies_from is not None:
        try:
            lines = studies_from.read_text().splitlines()
        except OSError as exc:
            raise fail(f"cannot read {studies_from}: {exc.strerror}") from None
        studies = [*studies, *(line.strip() for line in lines if line.strip())]
    if bool(studies) == bool(series):
        raise fail("give either studies (--study, --studies-from) or series (--series)")
    return RetrieveKeys(study_uids=tuple(studies), series_uids=tuple(series))


def _instances_to_send(core: Core, keys: RetrieveKeys) -> list[StoredInstance]:
    from sqlalchemy.exc import SQLAlchemyError

    from catalog import locate_keys

    try:
        instances = locate_keys(core.db, keys)
    except SQLAlchemyError:
        raise fail(f"cannot read the catalog at {core.db.describe()}") from None
    if not instances:
        raise fail("no stored instance matches; nothing to send")
    missing = len(keys.sop_instance_uids) - len(instances)
    if missing > 0:
        err.print(
            f"{missing} instances pinned by the cohort are no longer stored; sending the others",
            highlight=False,
        )
    return instances


def _cohort_keys(core: Core, ref: str) -> RetrieveKeys:
    """The instances a frozen cohort pinned (its members when it was frozen)."""
    from catalog import RetrieveKeys
    from export import Cohorts, ExportError
    from node.app import build_label_source

    cohorts = Cohorts(core.db, core.settings.export, build_label_source(core.report_intake.tasks))
    try:
        frozen = cohorts.frozen(ref)
    except ExportError as exc:
        raise fail(str(exc)) from None
    pinned = tuple(
        instance.sop_instance_uid
        for member in frozen.series
        for instance, _blob, _sha in cohorts.frozen_instances(member)
    )
    if not pinned:
        raise fail(f"cohort {frozen.info.ref} pins no instance; nothing to send")
    return RetrieveKeys(sop_instance_uids=pinned)


@orthanc_app.command()
def pull(
    study: Annotated[
        str,
        typer.Option(
            "--study",
            help="The study in the source Orthanc: its Orthanc ID or its original "
            "Study Instance UID.",
        ),
    ],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    create: CreateOpt = False,
) -> None:
    """Fetch one study from the Orthanc of orthanc_sync.url now, through the ingest pipeline
    (de-identified on arrival). Works while the node runs; the sync's cursor does not move."""
    from jobs import JobFailedError, OrthancSync
    from node.app import build_core

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("ERROR")
    if not settings.orthanc_sync.url:
        raise fail("orthanc_sync.url is not set (PACSNODE_ORTHANC_SYNC__URL)")
    use_archive(settings, create=create)
    core = build_core(settings)
    sync = OrthancSync(settings.orthanc_sync, core.db, core.ingestor)
    try:
        with progress_bar() as progress:
            task = progress.add_task("pulling", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = sync.pull_study(study, on_instance=advance)
    except JobFailedError as exc:
        raise fail(str(exc)) from None
    finally:
        sync.close()
        core.close()
    out.print(
        f"study {result.study_instance_uid or '-'} {result.status.value}: {result.stored} stored, "
        f"{result.duplicate} already there, {result.refused} refused",
        highlight=False,
        soft_wrap=True,
    )
    if result.refused:
        raise typer.Exit(1)


@jobs_app.command("list")
def list_jobs(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each scheduled job with its interval, next run, last run and result."""
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError

    from catalog import Database
    from jobs import scheduled_jobs

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    use_archive(settings)
    db = Database(settings.catalog_url)
    try:
        listed = scheduled_jobs(db)
    except SQLAlchemyError:
        raise fail(f"cannot read the jobs of the catalog at {db.describe()}") from None
    finally:
        db.dispose()
    rows = [
        {
            "id": job.id,
            "name": job.name,
            "every_seconds": job.every.total_seconds() if job.every else None,
            "next_run": job.next_run.isoformat() if job.next_run else None,
            "last_run": job.last_run.started_at.isoformat() if job.last_run else None,
            "last_node": job.last_run.node if job.last_run else None,
            "result": job.last_run.outcome.value if job.last_run else None,
            "summary": job.last_run.summary if job.last_run else None,
        }
        for job in listed
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no scheduled jobs (enable one, e.g. orthanc_sync.enabled = true)")
        return
    table = Table(title="scheduled jobs")
    for column in ("job", "every", "next run", "last run", "result"):
        table.add_column(column)
    for row in rows:
        every = row["every_seconds"]
        result = str(row["result"] or "-")
        if row["summary"]:
            result = f"{result}: {row['summary']}"
        table.add_row(
            str(row["id"]),
            f"{every:g} s" if isinstance(every, float) else "-",
            str(row["next_run"] or "-"),
            f"{row['last_run']} on {row['last_node']}" if row["last_run"] else "never",
            result,
        )
    out.print(table)
