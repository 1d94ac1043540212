"""``pacsnode tokens ...`` and ``pacsnode users ...``: the credentials of HTTP callers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from node.cli_common import (
    ConfigOpt,
    DatabaseOpt,
    DataDirOpt,
    JsonOpt,
    cli_actor,
    cli_settings,
    command_group,
    fail,
    out,
    use_archive,
)

if TYPE_CHECKING:
    from access.credentials import Credentials

tokens_app = command_group(
    "API tokens for scripts and services (Authorization: Bearer pn_...). A token is shown "
    "once, when it is created; the catalog keeps its sha256 only."
)
users_app = command_group(
    "People who log in with a password (the login page; a session cookie afterwards)."
)

RolesOpt = Annotated[
    list[str],
    typer.Option(
        "--role",
        help="A role (viewer, uploader, researcher, admin, or one of access.roles); repeat.",
    ),
]
ProjectsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--project",
        help="A project whose studies it may see; repeat. None given: every project.",
    ),
]


@contextmanager
def _credentials(
    config: Path | None, data_dir: Path | None, database_url: str | None
) -> Iterator[Credentials]:
    from access.credentials import Credentials
    from catalog.db import Database

    settings = cli_settings(config, data_dir, database_url)
    use_archive(settings)
    db = Database(settings.catalog_url)
    try:
        db.migrate()
        yield Credentials(db, settings.access)
    finally:
        db.dispose()


@tokens_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A name for the token (who or what uses it).")],
    roles: RolesOpt,
    projects: ProjectsOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a token and print it (the only time it is shown)."""
    from access.credentials import CredentialError

    with _credentials(config, data_dir, database_url) as credentials:
        try:
            token = credentials.create_token(name, roles, projects, created_by=cli_actor())
        except CredentialError as exc:
            raise fail(str(exc)) from None
    out.print(token, highlight=False, markup=False)


@tokens_app.command("list")
def token_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the tokens (names, roles, projects; never the tokens themselves)."""
    with _credentials(config, data_dir, database_url) as credentials:
        tokens = credentials.tokens()
    rows = [
        {
            "name": t.name,
            "prefix": t.prefix,
            "roles": t.roles,
            "projects": t.projects,
            "created_at": t.created_at.isoformat(),
            "created_by": t.created_by,
            "revoked": t.revoked,
        }
        for t in tokens
    ]
    _print(rows, as_json)


@tokens_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a token: it is refused from then on (within 30 s on every node)."""
    from access.credentials import CredentialError

    with _credentials(config, data_dir, database_url) as credentials:
        try:
            credentials.revoke_token(name, actor=cli_actor())
        except CredentialError as exc:
            raise fail(str(exc)) from None
    out.print(f"revoked {name}", highlight=False, markup=False)


def _password(from_env: str | None) -> str:
    if from_env:
        value = os.environ.get(from_env)
        if not value:
            raise fail(f"the environment variable {from_env} is empty or not set")
        return value
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


PasswordEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--password-env",
        help="Read the password from this environment variable instead of asking for it.",
    ),
]


@users_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The user's login name.")],
    roles: RolesOpt,
    projects: ProjectsOpt = None,
    password_env: PasswordEnvOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Add a user (asks for the password twice unless --password-env names it)."""
    from access.credentials import CredentialError

    password = _password(password_env)
    with _credentials(config, data_dir, database_url) as credentials:
        try:
            credentials.add_user(name, password, roles, projects, actor=cli_actor())
        except CredentialError as exc:
            raise fail(str(exc)) from None
    out.print(f"added {name}", highlight=False, markup=False)


@users_app.command("list")
def user_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the users (names, roles, projects, disabled)."""
    with _credentials(config, data_dir, database_url) as credentials:
        users = credentials.users()
    rows = [
        {
            "name": u.name,
            "roles": u.roles,
            "projects": u.projects,
            "disabled": u.disabled,
            "created_at": u.created_at.isoformat(),
        }
        for u in users
    ]
    _print(rows, as_json)


@users_app.command("passwd")
def user_passwd(
    name: Annotated[str, typer.Argument(help="The user's login name.")],
    password_env: PasswordEnvOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Set a user's password (their sessions end)."""
    from access.credentials import CredentialError

    password = _password(password_env)
    with _credentials(config, data_dir, database_url) as credentials:
        try:
            credentials.set_password(name, password, actor=cli_actor())
            credentials.end_sessions_of(f"user:{name}")
        except CredentialError as exc:
            raise fail(str(exc)) from None
    out.print(f"password of {name} changed", highlight=False, markup=False)


@users_app.command("disable")
def user_disable(
    name: Annotated[str, typer.Argument(help="The user's login name.")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Disable a user (their sessions end at once); --enable undoes it."""
    from access.credentials import CredentialError

    with _credentials(config, data_dir, database_url) as credentials:
        try:
            credentials.set_disabled(name, not enable, actor=cli_actor())
        except CredentialError as exc:
            raise fail(str(exc)) from None
    out.print(f"{name} {'enabled' if enable else 'disabled'}", highlight=False, markup=False)


def _print(rows: Sequence[Mapping[str, object]], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table()
    for column in rows[0] if rows else ("name",):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                "" if v is None else ", ".join(v) if isinstance(v, list) else str(v)
                for v in row.values()
            )
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``tokens`` and ``users`` to the ``pacsnode`` command line."""
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(users_app, name="users")
