"""Authentication and authorization of the HTTP door, in one place.

Every route states the permission it needs with exactly one dependency,
``Depends(require(Permission.X))`` (or :data:`PUBLIC` for the few that anyone may reach:
``/healthz``, the login page, static assets); a test walks the app and fails on a route
without one. The dependency returns the caller's :class:`access.Principal`, whose
``projects`` the route passes to the catalog so that a study of another project does not
exist for the caller (404, never 403).

Credentials, by ``access.methods``:

- ``Authorization: Bearer pn_...``: an API token (``token``);
- ``Authorization: Bearer <JWT>``: an OpenID Connect access token (``oidc``);
- the ``pacsnode_session`` cookie: a login session (``password``, and the node-side OIDC
  login). A state-changing request (POST, PUT, PATCH, DELETE) authenticated by the cookie must
  come from the node's own pages (``Sec-Fetch-Site: same-origin``, or an ``Origin`` equal to
  the request's own): the cookie is ``SameSite=Strict`` too, and both together stop CSRF.

With no method configured every caller is :func:`access.unauthenticated` (allowed only while
every listener is on loopback; see ``config.Settings``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from access import Permission, Principal, unauthenticated
from access.credentials import TOKEN_PREFIX, Credentials
from config.access import AccessSettings

SESSION_COOKIE = "pacsnode_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CACHE_SECONDS = 30.0


class BearerVerifier(Protocol):
    """Checks a JSON Web Token of an OpenID Connect provider (``access.oidc``)."""

    def cached(self, token: str, remote: str) -> Principal | None:
        """The principal of a token it checked lately, until the token expires (no I/O)."""
        ...

    def verify(self, token: str, remote: str) -> Principal | None: ...


class Authenticator:
    """Who a request comes from (``None``: nobody the node knows)."""

    def __init__(
        self,
        settings: AccessSettings,
        credentials: Credentials | None,
        oidc: BearerVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.oidc = oidc
        self._checked: dict[str, tuple[float, Principal | None]] = {}
        """Credentials checked in the last :data:`_CACHE_SECONDS`: most requests are answered
        without leaving the event loop (a revocation takes effect within that time)."""

    async def principal(self, request: Request) -> Principal | None:
        remote = f"{request.client.host}:{request.client.port}" if request.client else ""
        if not self.settings.enabled:
            return unauthenticated(remote)
        methods = self.settings.methods
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        credentials = self.credentials
        if scheme.lower() == "bearer" and presented:
            token = presented.strip()
            if token.startswith(TOKEN_PREFIX):
                if "token" in methods and credentials is not None:
                    return await self._checked_once(token, credentials.verify_token, remote)
                return None
            if "oidc" in methods and self.oidc is not None:
                # the verifier remembers a token until it expires, not for a fixed time
                known = self.oidc.cached(token, remote)
                return known or await run_in_threadpool(self.oidc.verify, token, remote)
            return None
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and credentials is not None and ("password" in methods or "oidc" in methods):
            principal = await self._checked_once(cookie, credentials.verify_session, remote)
            if principal is not None and request.method not in _SAFE_METHODS:
                _refuse_cross_site(request)
            return principal
        return None

    async def _checked_once(
        self, secret: str, check: Callable[[str, str], Principal | None], remote: str
    ) -> Principal | None:
        """``check(secret)``, from the cache when it was checked lately."""
        now = time.monotonic()
        cached = self._checked.get(secret)
        if cached is not None and now - cached[0] < _CACHE_SECONDS:
            principal = cached[1]
        else:
            principal = await run_in_threadpool(check, secret, remote)
            if len(self._checked) > 10_000:
                self._checked.clear()
            self._checked[secret] = (now, principal)
        if principal is None:
            return None
        return Principal(
            principal.name, principal.permissions, principal.projects, principal.method, remote
        )

    def forget(self, secret: str) -> None:
        """Drop a credential from this node's cache (logout)."""
        self._checked.pop(secret, None)


def _refuse_cross_site(request: Request) -> None:
    """A cookie-authenticated change must come from the node's own pages (CSRF)."""
    if request.headers.get("sec-fetch-site") == "same-origin":
        return
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc == request.headers.get("host"):
        return
    raise HTTPException(403, "a change sent with the session cookie must come from this site")


class Require:
    """The dependency of a route: the permission it needs (``None``: public)."""

    def __init__(self, permission: Permission | None) -> None:
        self.permission = permission

    def __repr__(self) -> str:
        return f"Require({self.permission.value if self.permission else 'public'})"

    async def __call__(self, request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = getattr(request.state, "principal", None)
        if principal is None:
            principal = await authenticator.principal(request)
            request.state.principal = principal
        if self.permission is None:
            return principal or unauthenticated_visitor(request)
        if principal is None:
            raise HTTPException(
                401,
                "authentication required: an API token or OpenID Connect access token "
                "(Authorization: Bearer ...), or a login session",
                headers={"WWW-Authenticate": 'Bearer realm="pacsnode"'},
            )
        if not principal.allows(self.permission):
            raise HTTPException(403, f"this needs the permission {self.permission.value}")
        return principal


def unauthenticated_visitor(request: Request) -> Principal:
    """A caller of a public route the node does not know: may do nothing else."""
    remote = f"{request.client.host}:{request.client.port}" if request.client else ""
    return Principal("visitor", frozenset(), frozenset(), "none", remote)


_REQUIRES: dict[Permission | None, Require] = {}


def require(permission: Permission) -> Require:
    """The dependency stating ``permission`` (one instance per permission)."""
    return _REQUIRES.setdefault(permission, Require(permission))


PUBLIC = Require(None)
"""The dependency of routes anyone may reach (health, login, static assets)."""


def requirement_of(call: Callable[..., object]) -> Require | None:
    """The :class:`Require` a dependency callable is, if it is one (for the route test)."""
    return call if isinstance(call, Require) else None


def caller_projects(request: Request) -> frozenset[str] | None:
    """The projects whose studies exist for the caller of a route (``None``: all), as its
    :class:`Require` dependency found them; a request without one sees none."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.projects if principal is not None else frozenset()
