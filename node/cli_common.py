"""What every ``pacsnode`` command shares: consoles, the common options, one-line errors,
settings loading, the archive a command works on, and progress bars.

Command modules import the core (pydicom, SQLAlchemy, FastAPI, ...) inside the commands,
never at module level: ``pacsnode --help`` and quick commands must not pay for it.
"""

from __future__ import annotations

import getpass
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

    from config import Settings

err = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (see config/pacsnode.example.toml)."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="The node's data folder: SQLite catalog, blobs, secrets. "
        "[env: PACSNODE_DATA_DIR; default ./pacsnode-data]"
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        help="Catalog URL, e.g. postgresql+psycopg://user@host/db. [env: PACSNODE_DATABASE_URL]"
    ),
]
CreateOpt = Annotated[
    bool,
    typer.Option(
        "--create",
        help="Start a new archive (catalog and secrets) if there is none at the data folder.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def command_group(help_text: str, **options: Any) -> typer.Typer:
    """A ``typer.Typer`` as every pacsnode command group is made.

    Help texts are printed as written: rich markup would eat everything in square brackets
    (``[labeling.columns]``, ``[env: ...]``).
    """
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        **options,
    )


def fail(message: str) -> typer.Exit:
    """Print ``Error: message`` on stderr; raise the returned exit (status 1)."""
    from rich.text import Text

    err.print(Text.assemble(("Error:", "red"), f" {message}"), highlight=False, soft_wrap=True)
    return typer.Exit(1)


def cli_settings(
    config: Path | None,
    data_dir: Path | None = None,
    database_url: str | None = None,
    **overrides: Any,
) -> Settings:
    """The settings from the file, the environment and the options given (unset: ``None``)."""
    from config import ConfigError, load_settings

    try:
        return load_settings(config, data_dir=data_dir, database_url=database_url, **overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def use_archive(settings: Settings, *, create: bool = False) -> None:
    """Say on stderr (one line) which archive the command works on; refuse to go on where
    there is none, unless ``create`` (``--create``, or ``serve``: a node's first start).

    An archive is its catalog and its secrets: a catalog used with new secrets would get
    pseudonyms that meet nothing already stored, so a missing piece is never made up here.
    """
    catalog_file = _sqlite_file(settings)
    secrets = settings.secrets_root.resolve()
    missing = []
    if catalog_file is not None and not catalog_file.is_file():
        missing.append(f"no catalog at {catalog_file.resolve()}")
    if not (secrets / "hmac.key").is_file():
        missing.append(f"no secrets at {secrets}")
    where = f"archive: {settings.data_dir.resolve()}"
    if settings.database_url is not None:
        where += f" (catalog {_describe(settings.database_url)})"
    if missing and not create:
        raise fail(
            f"{'; '.join(missing)} (has the node run there?). Give the node's data folder "
            "with --data-dir or PACSNODE_DATA_DIR, or --create to start a new archive there"
        )
    state = " (new)" if missing else ""
    err.print(f"{where}{state}", highlight=False, soft_wrap=True, markup=False)


def _sqlite_file(settings: Settings) -> Path | None:
    """The file of a SQLite catalog, or None for a server database."""
    if settings.database_url is None:
        return settings.data_dir / "catalog.sqlite"
    from sqlalchemy import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        return None
    return Path(url.database) if url.database and url.database != ":memory:" else None


def _describe(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def cli_actor() -> str:
    """Who runs this command, for the audit trail."""
    try:
        return f"cli {getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "cli"


def configure_logging(level: str, process: str = "") -> None:
    """Log to stderr; only the CLI installs handlers (libraries just log). ``process`` names
    the process of a node that logs, beside its main one (a DICOM worker)."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)-7s {process + ' ' if process else ''}%(name)s: "
        "%(message)s",
        stream=sys.stderr,
        force=True,
    )
    # alembic, imported only when a command migrates, says at INFO which plugins it loaded
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def progress_bar() -> Progress:
    """The progress bar of long commands (import, verify, check, export ...), on stderr."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    )
