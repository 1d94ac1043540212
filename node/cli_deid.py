"""``pacsnode deid ...`` and ``pacsnode reidentify``: check, review, re-identify (audited)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from node.cli_common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    cli_actor,
    cli_settings,
    command_group,
    err,
    fail,
    out,
    progress_bar,
    use_archive,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from catalog import Database
    from config import Settings
    from deid import Vault
    from deid.check import Finding, HeaderChecker
    from storage import BlobStore

deid_app = command_group(
    "De-identification: check stored instances or files for PHI, review quarantine."
)
quarantine_app = command_group(
    "Instances held back by the burned-in policy (deid.burned_in_policy = quarantine): "
    "stored de-identified, invisible to every query until released."
)
deid_app.add_typer(quarantine_app, name="quarantine")


class Kind(enum.StrEnum):
    patient = "patient"
    study = "study"
    series = "series"
    accession = "accession"


def _open(settings: Settings) -> tuple[Database, Vault]:
    """The existing catalog and vault (never created here)."""
    from catalog import Database
    from deid import SecretsError, Vault, load_secrets

    use_archive(settings)
    try:
        secrets = load_secrets(settings.secrets_root, create=False)
    except SecretsError as exc:
        raise fail(str(exc)) from None
    db = Database(settings.catalog_url)
    return db, Vault(db, secrets.vault_key)


# ----------------------------------------------------------------------------------- check


@deid_app.command("check")
def check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="DICOM files, folders (recursively) or zip archives to check."),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Check every stored instance (quarantined included).")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Report every attribute that still carries an identifier the profile removes, and
    every original value from the vault found anywhere in the headers.

    Values are never printed, only where they are. Exits with status 1 on any finding.
    Reading the vault for the search is written to the audit trail.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from deid import VaultError, build_profile
    from deid.check import HeaderChecker, OriginalIndex
    from deid.deidentifier import options_from
    from ingest.files import count_inputs, list_files, read_inputs
    from node.app import build_blob_store

    if not paths and not all_:
        raise fail("name files or folders to check, or --all for the whole archive")
    settings = cli_settings(config, data_dir, database_url)
    db, vault = _open(settings)
    try:
        originals = OriginalIndex(vault.all_originals(actor=cli_actor(), action="deid_check"))
        checker = HeaderChecker(
            build_profile(options_from(settings.deid)), originals, settings.deid.private_rules()
        )
        findings: list[Finding] = []
        checked = 0
        if all_:
            try:
                blobs = build_blob_store(settings)  # the filesystem folder or the S3 bucket
            except OSError as exc:
                raise fail(f"cannot open the blob store: {exc}") from None
            stored = _stored(db)
            inputs: Iterator[tuple[str, bytes | str | None]] = (
                (uid, _read_blob(blobs, key)) for uid, key in stored
            )
            total = len(stored)
        else:
            try:
                files = list_files(paths or [])
            except FileNotFoundError as exc:
                raise fail(str(exc)) from None
            inputs = ((c.name, c.data or c.refused) for c in read_inputs(files, settings.imports))
            total = count_inputs(files)
        with progress_bar() as progress:
            task = progress.add_task("checking", total=total)
            for where, data in inputs:
                findings.extend(_check_one(checker, where, data))
                checked += 1
                progress.advance(task)
    except (SQLAlchemyError, VaultError) as exc:
        raise fail(f"cannot read the catalog or vault ({type(exc).__name__})") from None
    finally:
        db.dispose()
    _report(findings, checked, originals.count, as_json)
    if findings:
        raise typer.Exit(1)


def _stored(db: Database) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from catalog.models import Instance, QuarantinedInstance

    with db.read() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.blob_key)).all()
        held_rows = session.execute(
            select(QuarantinedInstance.sop_instance_uid, QuarantinedInstance.blob_key)
        ).all()
    return [(str(uid), str(key)) for uid, key in [*rows, *held_rows]]


def _read_blob(blobs: BlobStore, key: str) -> bytes | None:
    from storage import BlobNotFoundError

    try:
        with blobs.open(key) as stream:
            return stream.read()
    except (BlobNotFoundError, OSError):
        return None


def _check_one(checker: HeaderChecker, where: str, data: bytes | str | None) -> list[Finding]:
    """Findings of one stored blob or input file (``None``: its blob is missing; text: why
    the input was not read)."""
    from io import BytesIO

    from pydicom import dcmread

    from deid.check import Finding

    if data is None:
        return [Finding(where, "-", "-", "blob missing")]
    if isinstance(data, str):
        return [Finding(where, "-", "-", data)]
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        return [Finding(where, "-", "-", f"not readable as DICOM ({type(exc).__name__})")]
    try:
        return checker.check(ds, where)
    except Exception as exc:
        return [Finding(where, "-", "-", f"cannot be checked ({type(exc).__name__})")]


def _report(findings: list[Finding], checked: int, originals: int, as_json: bool) -> None:
    from dataclasses import asdict

    from rich.table import Table

    if as_json:
        out.print_json(
            json.dumps(
                {
                    "checked": checked,
                    "originals_searched": originals,
                    "findings": [asdict(f) for f in findings],
                }
            )
        )
        return
    if findings:
        table = Table(title="findings")
        for column in ("where", "tag", "keyword", "problem"):
            table.add_column(column, overflow="fold")
        for finding in findings:
            table.add_row(finding.where, finding.tag, finding.keyword, finding.problem)
        out.print(table)
    out.print(
        f"{checked:,} data sets checked against the profile and {originals:,} original "
        f"values from the vault: {len(findings):,} findings",
        highlight=False,
    )


# ------------------------------------------------------------------------------ quarantine


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """List quarantined instances (stored UIDs, reason, size)."""
    from rich.table import Table

    from catalog.quarantine import held

    settings = cli_settings(config, data_dir, database_url)
    db, _ = _open(settings)
    try:
        rows = held(db)
    finally:
        db.dispose()
    table = Table(title=f"{len(rows)} quarantined instance(s)")
    for column in ("SOP Instance UID", "study", "modality", "reason", "received"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.sop_instance_uid,
            row.study_instance_uid,
            row.modality or "",
            row.reason,
            row.received_at,
        )
    out.print(table)


def _review(
    uids: list[str],
    config: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    action: str,
) -> None:
    from ingest import ReviewError
    from ingest.review import discard
    from node.app import build_core

    settings = cli_settings(config, data_dir, database_url)
    use_archive(settings)
    core = build_core(settings)
    failed = False
    try:
        for uid in uids:
            try:
                if action == "release":
                    result = core.ingestor.release(uid, actor=cli_actor())
                    if not result.outcome.success:
                        raise ReviewError(f"{uid}: not released: {result.reason}")
                    out.print(f"{uid}: released ({result.outcome.value})", highlight=False)
                else:
                    discard(core.ingestor.catalog, core.blobs, uid, actor=cli_actor())
                    out.print(f"{uid}: discarded", highlight=False)
            except ReviewError as exc:
                err.print(f"[red]Error:[/red] {exc}", highlight=False)
                failed = True
    finally:
        core.close()
    if failed:
        raise typer.Exit(1)


@quarantine_app.command("release")
def quarantine_release(
    uids: Annotated[list[str], typer.Argument(help="Stored SOP Instance UIDs to release.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Index reviewed instances: from now on queries, viewers and exports see them."""
    _review(uids, config, data_dir, database_url, "release")


@quarantine_app.command("discard")
def quarantine_discard(
    uids: Annotated[list[str], typer.Argument(help="Stored SOP Instance UIDs to remove.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Remove quarantined instances for good (their blobs are deleted)."""
    _review(uids, config, data_dir, database_url, "discard")


# ------------------------------------------------------------------------------ reidentify


def reidentify(
    kind: Annotated[Kind, typer.Argument(help="What the pseudonym stands for.")],
    pseudonym: Annotated[
        str,
        typer.Argument(
            help="Pseudo Patient ID, pseudo Accession Number, or stored Study/Series UID."
        ),
    ],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="Why (kept in the audit trail as given: name no patient in it).",
        ),
    ],
    studies: Annotated[
        bool, typer.Option("--studies", help="With a patient: also list their studies.")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Print the originals behind a pseudonym from the encrypted vault (admin only).

    Every call is written to the audit trail (who, when, which pseudonym, why). Exits
    with status 1 when the vault holds nothing for the pseudonym.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from deid import Accessor, VaultError

    settings = cli_settings(config, data_dir, database_url)
    db, vault = _open(settings)
    try:
        accessor = Accessor(cli_actor(), reason)
        originals = vault.reidentify(kind.value, pseudonym, actor=accessor)
        answer: dict[str, Any] = {"kind": kind.value, "pseudonym": pseudonym}
        if originals is not None:
            answer["originals"] = originals
            if studies and kind is Kind.patient:
                answer["studies"] = vault.studies_of(pseudonym, actor=accessor)
    except (SQLAlchemyError, VaultError) as exc:
        raise fail(f"cannot read the vault ({type(exc).__name__})") from None
    finally:
        db.dispose()
    if originals is None:
        raise fail(f"the vault holds no {kind.value} {pseudonym}")
    out.print_json(json.dumps(answer, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    """Add ``deid`` and ``reidentify`` to the ``pacsnode`` command line."""
    app.add_typer(deid_app, name="deid")
    app.command("reidentify")(reidentify)
