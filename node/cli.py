"""The ``pacsnode`` command line: a thin layer over :mod:`node.app` and the core.

The core is imported inside each command (see :mod:`node.cli_common`), so ``--help``,
``--version`` and light commands start without loading pydicom, pynetdicom or FastAPI.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from node.cli_access import register as register_access
from node.cli_audit import register as register_audit
from node.cli_common import (
    ConfigOpt,
    CreateOpt,
    DatabaseOpt,
    DataDirOpt,
    cli_actor,
    cli_settings,
    command_group,
    configure_logging,
    fail,
    out,
    progress_bar,
    use_archive,
)
from node.cli_deid import register as register_deid
from node.cli_export import cohort_app, export
from node.cli_labels import labels_app, reports_app

if TYPE_CHECKING:
    from types import FrameType

GIL_SWITCH_INTERVAL = 0.001
"""Seconds a thread holds the GIL while another waits (Python's default: 0.005)."""

app = command_group(
    "pacsnode: a DICOM archive node. It receives studies over DICOM (C-STORE) and "
    "DICOMweb, de-identifies them on arrival, indexes them, and serves them back.\n\n"
    "Every command that works on an archive names it on stderr. Only serve (a node's first "
    "start) and --create start a new archive; the others refuse a data folder without one.",
    name="pacsnode",
)
app.add_typer(reports_app, name="reports")
app.add_typer(labels_app, name="labels")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"pacsnode {version('pacsnode')}", highlight=False)
        except PackageNotFoundError:
            out.print("pacsnode (not installed: version unknown)", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version of pacsnode and exit.",
        ),
    ] = False,
) -> None:
    """Options of pacsnode itself (the help text is the app's)."""


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    ae_title: Annotated[
        str | None, typer.Option(help="DICOM AE title. [env: PACSNODE_AE_TITLE; default PACSNODE]")
    ] = None,
    dicom_host: Annotated[
        str | None,
        typer.Option(
            help="Address the DICOM port listens on (beyond loopback: set "
            "allowed_calling_aets). [env: PACSNODE_DICOM_HOST; default 127.0.0.1]"
        ),
    ] = None,
    dicom_port: Annotated[
        int | None, typer.Option(help="DICOM port. [env: PACSNODE_DICOM_PORT; default 11112]")
    ] = None,
    http_host: Annotated[
        str | None,
        typer.Option(help="HTTP address. [env: PACSNODE_HTTP_HOST; default 127.0.0.1]"),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port. [env: PACSNODE_HTTP_PORT; default 8042]")
    ] = None,
    mllp_host: Annotated[
        str | None,
        typer.Option(
            help="Address of the HL7 v2 (MLLP) listener. "
            "[env: PACSNODE_LABELING__MLLP_HOST; default 127.0.0.1]"
        ),
    ] = None,
    mllp_port: Annotated[
        int | None,
        typer.Option(help="HL7 v2 (MLLP) port. [env: PACSNODE_LABELING__MLLP_PORT; default 2575]"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Processes accepting DICOM associations (SO_REUSEPORT), each with its own "
            "ingest pipeline; 0: one per CPU core, 1: all in one process. "
            "[env: PACSNODE_WORKERS; default 0]",
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Run the node: DICOM AE, HTTP server and HL7 listener, until SIGTERM or Ctrl-C; the
    DICOM AE runs in --workers processes. The first start in a data folder creates the
    archive (catalog and secrets). SIGHUP reloads the HTTPS certificate and key
    (https.certfile, https.keyfile)."""
    import logging
    import signal
    import sys
    import threading

    from sqlalchemy.exc import SQLAlchemyError

    from labeling import TaskFileError
    from node.app import Node

    labeling = {
        key: value
        for key, value in (("mllp_host", mllp_host), ("mllp_port", mllp_port))
        if value is not None
    }
    settings = cli_settings(
        config,
        data_dir=data_dir,
        database_url=database_url,
        ae_title=ae_title,
        dicom_host=dicom_host,
        dicom_port=dicom_port,
        http_port=http_port,
        http_host=http_host,
        log_level=log_level,
        labeling=labeling or None,
        workers=workers,
    )
    use_archive(settings, create=True)
    configure_logging(settings.log_level)
    # pynetdicom hands every PDU between an association's thread and its DUL thread; with
    # Python's default 5 ms GIL switch interval each handoff can wait that long. Measured
    # with 1 ms: a 500-match C-FIND 385 -> 298 ms, C-STORE throughput unchanged.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("node").info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        node = Node(settings)
    except (OSError, RuntimeError, SQLAlchemyError, TaskFileError) as exc:
        raise fail(f"cannot start the node: {exc}") from None

    def reload_certificate(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("node").info("received %s", signal.Signals(signum).name)
        node.reload_certificate()

    signal.signal(signal.SIGHUP, reload_certificate)
    try:
        node.start()
    except (OSError, RuntimeError) as exc:
        node.core.close()
        raise fail(f"cannot start the node: {exc}") from None
    stop.wait()
    node.stop()


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, folders or zip archives.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    create: CreateOpt = False,
    list_rejected: Annotated[
        bool, typer.Option(help="Name every file that was not stored, with the reason.")
    ] = False,
) -> None:
    """Import DICOM files through the same pipeline as C-STORE (de-identified, indexed).

    Works while the node runs. Exits with status 1 if any file was not stored.
    """
    from ingest import Outcome, Source
    from ingest.files import count_inputs, list_files, read_inputs
    from node.app import build_core

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("ERROR")
    try:
        files = list_files(paths)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    use_archive(settings, create=create)
    core = build_core(settings)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = []
    source = Source("folder", "cli", actor=cli_actor())
    try:
        with progress_bar() as progress:
            task = progress.add_task("importing", total=count_inputs(files))
            for candidate in read_inputs(files, settings.imports):
                if candidate.data is None:  # refused before the pipeline (not read)
                    outcome, reason = Outcome.REJECTED_INVALID, candidate.refused
                else:
                    result = core.ingestor.accept(candidate.data, source)
                    outcome, reason = result.outcome, result.reason
                outcomes[outcome.value] += 1
                if not outcome.success:
                    reasons[reason] += 1
                    rejected.append((candidate.name, reason))
                elif candidate.note:
                    notes[candidate.note] += 1
                progress.advance(task, candidate.share)
    finally:
        core.close()
    _print_import_summary(outcomes, reasons, notes, rejected if list_rejected else [])
    if rejected:
        raise typer.Exit(1)


@app.command()
def stats(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count patients, studies, series, instances and bytes in the catalog."""
    from dataclasses import asdict

    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError

    from catalog.db import Database
    from catalog.stats import catalog_stats

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    use_archive(settings)
    db = Database(settings.catalog_url)
    try:
        figures = catalog_stats(db)
    except SQLAlchemyError:
        raise fail(f"no catalog at {db.describe()} (has the node run there?)") from None
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps(asdict(figures)))
        return
    table = Table(title=f"catalog {db.describe()}", show_header=False)
    for name, value in asdict(figures).items():
        table.add_row(name, _human_bytes(value) if name == "bytes" else f"{value:,}")
    out.print(table)


@app.command()
def verify(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    quick: Annotated[
        bool, typer.Option(help="Check presence and size only, do not re-hash every blob.")
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            help=(
                "Remove orphan blobs and stale temporary files (older than --grace), and "
                "spool files left by a node process that is gone."
            )
        ),
    ] = False,
    grace: Annotated[
        float, typer.Option(help="Seconds after which an unreferenced file counts as debris.")
    ] = 600.0,
) -> None:
    """Check that every indexed instance's blob is there and intact; find crash debris
    (orphan blobs, unfinished writes, spool files of a node process that died).

    Works while the node runs. Exits with status 1 if a problem remains.
    """
    from ingest import integrity
    from ingest.spool import leftovers
    from node.app import build_core

    settings = cli_settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("ERROR")
    use_archive(settings)
    core = build_core(settings)
    try:
        with progress_bar() as progress:
            task = progress.add_task("verifying", total=integrity.count_instances(core.db))
            report = integrity.check(
                core.db,
                core.blobs,
                verify_hashes=not quick,
                grace_seconds=grace,
                advance=lambda n: progress.advance(task, n),
            )
        removed = integrity.repair(report, core.blobs) if repair else 0
    finally:
        core.close()
    spooled = leftovers(settings.spool_root)
    for path in spooled:
        out.print(f"spool leftover: {path}", highlight=False, soft_wrap=True)
        if repair:
            path.unlink(missing_ok=True)
    if repair and spooled:
        out.print(f"removed {len(spooled):,} leftover spool files")
    out.print(f"{report.instances:,} instances and {report.blobs:,} blobs checked")
    for kind in integrity.ProblemKind:
        for problem in report.of(kind):
            out.print(f"{kind.value}: {problem.ref}", highlight=False, soft_wrap=True)
    if removed:
        out.print(f"removed {removed:,} orphan or temporary files")
    unrepaired = [
        p
        for p in report.problems
        if not repair or p.kind in (integrity.ProblemKind.MISSING, integrity.ProblemKind.CORRUPT)
    ]
    if unrepaired or (spooled and not repair):
        raise typer.Exit(1)


def _print_import_summary(
    outcomes: Counter[str],
    reasons: Counter[str],
    notes: Counter[str],
    rejected: list[tuple[str, str]],
) -> None:
    from rich.table import Table

    from ingest import Outcome

    table = Table(title="import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in Outcome:
        if outcomes[outcome.value]:
            table.add_row(outcome.value, f"{outcomes[outcome.value]:,}")
    out.print(table)
    if reasons:
        why = Table(title="not stored, by reason")
        why.add_column("reason")
        why.add_column("files", justify="right")
        for reason, count in reasons.most_common():
            why.add_row(reason, f"{count:,}")
        out.print(why)
    for note, count in notes.most_common():
        out.print(f"{count:,} file(s) {note}", highlight=False, soft_wrap=True)
    for name, reason in rejected:
        out.print(f"{name}: {reason}", highlight=False, soft_wrap=True)


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{size:,} B"
        value /= 1000
    raise AssertionError("unreachable")


app.add_typer(cohort_app)
app.command("export")(export)
register_deid(app)
register_access(app)
register_audit(app)
import node.cli_qr  # noqa: E402, F401  (send, orthanc pull, jobs list: they use the helpers above)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
