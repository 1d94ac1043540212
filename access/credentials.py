"""API tokens, users with passwords, and login sessions, kept in the catalog.

Tokens and session cookies are long random strings: the catalog keeps their sha256 only (a
fast hash is right for values nobody can guess; checking one costs microseconds, so every
request can). Passwords are what people choose: argon2id (argon2-cffi), slow on purpose,
checked only at login.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from access.principal import Method, Principal, permissions_of
from audit.events import Action
from catalog import Database
from catalog.audit import AuditRecord, append_audit
from catalog.models import AccessToken, AppUser, LoginSession, utcnow
from config.access import PROJECT_NAME, AccessSettings

TOKEN_PREFIX = "pn_"  # noqa: S105 - the marker of an API token, not a secret
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_PROJECT = re.compile(PROJECT_NAME)
_CACHE_SECONDS = 30.0
"""How long a checked token stays trusted without asking the catalog again (a revocation
takes effect within this time on every node)."""


class CredentialError(ValueError):
    """A credential cannot be created or changed; the message says why (no secret in it)."""


@dataclass(frozen=True)
class TokenInfo:
    """What is shown of a token after its creation (never the token itself)."""

    name: str
    prefix: str
    roles: list[str]
    projects: list[str] | None
    created_at: datetime
    created_by: str
    revoked: bool


@dataclass(frozen=True)
class UserInfo:
    name: str
    roles: list[str]
    projects: list[str] | None
    disabled: bool
    created_at: datetime


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Credentials:
    """The catalog-backed credentials of a node (shared by every node of a catalog)."""

    def __init__(
        self, db: Database, settings: AccessSettings, hasher: PasswordHasher | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.hasher = hasher or PasswordHasher()
        self._checked: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()
        self._dummy: str | None = None

    # ----------------------------------------------------------------------------- tokens

    def create_token(
        self, name: str, roles: Iterable[str], projects: Iterable[str] | None, created_by: str
    ) -> str:
        """A new API token (returned once; only its sha256 is kept)."""
        roles, projects = self._grant(roles, projects)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.write() as session:
                session.add(
                    AccessToken(
                        name=_checked_name(name),
                        digest=digest(token),
                        prefix=token[:10],
                        roles=json.dumps(roles),
                        projects=None if projects is None else json.dumps(projects),
                        created_by=created_by[:256],
                    )
                )
                _audit(
                    session,
                    created_by,
                    Action.TOKEN_CHANGE,
                    f"token:{name}",
                    "created",
                    roles,
                    projects,
                )
        except IntegrityError:
            raise CredentialError(f"a token named {name!r} exists already") from None
        return token

    def tokens(self) -> list[TokenInfo]:
        with self.db.read() as session:
            rows = session.scalars(select(AccessToken).order_by(AccessToken.id)).all()
        return [
            TokenInfo(
                row.name,
                row.prefix,
                json.loads(row.roles),
                None if row.projects is None else json.loads(row.projects),
                row.created_at,
                row.created_by,
                row.revoked_at is not None,
            )
            for row in rows
        ]

    def revoke_token(self, name: str, *, actor: str) -> None:
        with self.db.write() as session:
            done = session.execute(
                update(AccessToken)
                .where(AccessToken.name == name, AccessToken.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                raise CredentialError(f"no active token named {name!r}")
            _audit(session, actor, Action.TOKEN_CHANGE, f"token:{name}", "revoked")
        with self._lock:
            self._checked.clear()

    def verify_token(self, token: str, remote: str = "") -> Principal | None:
        """The principal of an API token, or None (unknown or revoked)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        key = digest(token)
        now = time.monotonic()
        with self._lock:
            cached = self._checked.get(key)
        if cached is not None and now - cached[0] < _CACHE_SECONDS:
            principal = cached[1]
        else:
            with self.db.read() as session:
                row = session.scalars(
                    select(AccessToken).where(
                        AccessToken.digest == key, AccessToken.revoked_at.is_(None)
                    )
                ).one_or_none()
            principal = None if row is None else self._principal(f"token:{row.name}", row, "token")
            with self._lock:
                if len(self._checked) > 10_000:
                    self._checked.clear()
                self._checked[key] = (now, principal)
        return None if principal is None else _at(principal, remote)

    # ------------------------------------------------------------------------------ users

    def add_user(
        self,
        name: str,
        password: str,
        roles: Iterable[str],
        projects: Iterable[str] | None,
        *,
        actor: str,
    ) -> None:
        roles, projects = self._grant(roles, projects)
        try:
            with self.db.write() as session:
                session.add(
                    AppUser(
                        name=_checked_name(name),
                        password_hash=self.hasher.hash(_checked_password(password)),
                        roles=json.dumps(roles),
                        projects=None if projects is None else json.dumps(projects),
                    )
                )
                _audit(session, actor, Action.USER_CHANGE, f"user:{name}", "added", roles, projects)
        except IntegrityError:
            raise CredentialError(f"a user named {name!r} exists already") from None

    def users(self) -> list[UserInfo]:
        with self.db.read() as session:
            rows = session.scalars(select(AppUser).order_by(AppUser.id)).all()
        return [
            UserInfo(
                row.name,
                json.loads(row.roles),
                None if row.projects is None else json.loads(row.projects),
                row.disabled,
                row.created_at,
            )
            for row in rows
        ]

    def set_password(self, name: str, password: str, *, actor: str) -> None:
        hashed = self.hasher.hash(_checked_password(password))
        self._update_user(name, (actor, "password changed"), password_hash=hashed)

    def set_disabled(self, name: str, disabled: bool, *, actor: str) -> None:
        change = "disabled" if disabled else "enabled"
        self._update_user(name, (actor, change), disabled=disabled)
        if disabled:
            self.end_sessions_of(f"user:{name}")

    def verify_password(self, name: str, password: str, remote: str = "") -> Principal | None:
        """The principal of a user whose password is right, or None (after the same work
        whether the user exists or not, so timing does not tell)."""
        with self.db.read() as session:
            row = session.scalars(select(AppUser).where(AppUser.name == name)).one_or_none()
        stored = row.password_hash if row is not None else self._dummy_hash()
        try:
            self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        if self.hasher.check_needs_rehash(stored):
            self._update_user(name, None, password_hash=self.hasher.hash(password))
        return _at(self._principal(f"user:{row.name}", row, "password"), remote)

    def _dummy_hash(self) -> str:
        """Checked against when the user does not exist, so that takes as long as a wrong
        password (made once, with the hasher's own cost)."""
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    # --------------------------------------------------------------------------- sessions

    def start_session(self, principal: Principal) -> str:
        """A new session for ``principal``: the cookie value (only its sha256 is kept)."""
        cookie = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.db.write() as session:
            session.execute(delete(LoginSession).where(LoginSession.expires_at < now))
            session.add(
                LoginSession(
                    digest=digest(cookie),
                    principal=principal.to_json(),
                    expires_at=now + timedelta(hours=self.settings.session_hours),
                )
            )
        return cookie

    def verify_session(self, cookie: str, remote: str = "") -> Principal | None:
        if not cookie or len(cookie) > 128:
            return None
        with self.db.read() as session:
            row = session.scalars(
                select(LoginSession).where(
                    LoginSession.digest == digest(cookie),
                    LoginSession.expires_at > datetime.now(UTC),
                )
            ).one_or_none()
        if row is None:
            return None
        return Principal.from_json(row.principal, method="session", remote=remote)

    def end_session(self, cookie: str) -> None:
        with self.db.write() as session:
            session.execute(delete(LoginSession).where(LoginSession.digest == digest(cookie)))

    def end_sessions_of(self, name: str) -> None:
        """Log a principal out everywhere (a disabled user, a changed password)."""
        with self.db.write() as session:
            for row in session.scalars(select(LoginSession)).all():
                if json.loads(row.principal)["name"] == name:
                    session.delete(row)

    # ---------------------------------------------------------------------------- helpers

    def principal_of(
        self, name: str, roles: Iterable[str], projects: Iterable[str] | None, method: Method
    ) -> Principal:
        """A principal from roles and projects named by config or a provider's claims."""
        return Principal(
            name,
            permissions_of(roles, self.settings.roles),
            None if projects is None else frozenset(projects),
            method,
        )

    def _principal(self, name: str, row: AccessToken | AppUser, method: Method) -> Principal:
        projects = None if row.projects is None else json.loads(row.projects)
        return self.principal_of(name, json.loads(row.roles), projects, method)

    def _grant(
        self, roles: Iterable[str], projects: Iterable[str] | None
    ) -> tuple[list[str], list[str] | None]:
        roles = sorted(set(roles))
        unknown = [role for role in roles if role not in self.settings.roles]
        if not roles or unknown:
            known = ", ".join(sorted(self.settings.roles))
            raise CredentialError(f"give one or more roles of: {known}")
        if projects is None:
            return roles, None
        projects = sorted(set(projects))
        bad = [p for p in projects if not _PROJECT.match(p)]
        if bad or not projects:
            raise CredentialError("a project name is letters, digits, '_', '.' or '-'")
        return roles, projects

    def _update_user(self, name: str, change: tuple[str, str] | None, **values: object) -> None:
        """Change a user's row; ``change``: who and what, for the audit trail."""
        with self.db.write() as session:
            done = session.execute(update(AppUser).where(AppUser.name == name).values(**values))
            if not done.rowcount:  # type: ignore[attr-defined]
                raise CredentialError(f"no user named {name!r}")
            if change is not None:
                _audit(session, change[0], Action.USER_CHANGE, f"user:{name}", change[1])


def _audit(
    session: Session,
    actor: str,
    action: Action,
    target: str,
    change: str,
    roles: Iterable[str] = (),
    projects: Iterable[str] | None = None,
) -> None:
    """A token or user change, in the transaction that makes it."""
    detail: dict[str, object] = {"change": change}
    if roles:
        detail["roles"] = list(roles)
        detail["projects"] = "all" if projects is None else list(projects)
    event = AuditRecord(utcnow(), actor, action, "ok", target=target, detail=detail)
    append_audit(session, [event])


def _at(principal: Principal, remote: str) -> Principal:
    return Principal(
        principal.name, principal.permissions, principal.projects, principal.method, remote
    )


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise CredentialError(
            "a name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter "
            "or digit"
        )
    return name


def _checked_password(password: str) -> str:
    if len(password) < 12:
        raise CredentialError("a password has at least 12 characters")
    if len(password) > 1024:
        raise CredentialError("a password has at most 1024 characters")
    return password
