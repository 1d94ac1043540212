"""What every ``pacsnode`` command shares: consoles, the common options, one-line errors,
settings loading and progress bars."""

from __future__ import annotations

import getpass
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from config import ConfigError, Settings, load_settings

err = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (see config/pacsnode.example.toml)."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Data folder: SQLite catalog, blobs, secrets. [env: PACSNODE_DATA_DIR]"),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        help="Catalog URL, e.g. postgresql+psycopg://user@host/db. [env: PACSNODE_DATABASE_URL]"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def fail(message: str) -> typer.Exit:
    """Print ``Error: message`` on stderr; raise the returned exit (status 1)."""
    err.print(f"[red]Error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def cli_settings(
    config: Path | None,
    data_dir: Path | None = None,
    database_url: str | None = None,
    **overrides: Any,
) -> Settings:
    """The settings from the file, the environment and the options given (unset: ``None``)."""
    try:
        return load_settings(config, data_dir=data_dir, database_url=database_url, **overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def require_catalog(settings: Settings) -> None:
    """Refuse to go on (rather than create an empty catalog) where none exists yet."""
    sqlite_file = settings.data_dir / "catalog.sqlite"
    if settings.database_url is None and not sqlite_file.is_file():
        raise fail(f"no catalog at {sqlite_file} (has the node run there?)")


def cli_actor() -> str:
    """Who runs this command, for the audit trail."""
    try:
        return f"cli {getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "cli"


def configure_logging(level: str) -> None:
    """Log to stderr; only the CLI installs handlers (libraries just log)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def progress_bar() -> Progress:
    """The progress bar of long commands (import, verify, check, export ...), on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    )
