"""OpenID Connect at the HTTP door: the provider's bearer tokens, and the login of people.

The login runs in the node (the "backend for frontend" pattern): ``GET /login/oidc`` sends
the browser to the provider's authorization endpoint (authorization code flow with PKCE S256,
a ``state`` and a ``nonce``), remembering those in a short-lived cookie signed with a key
derived from the node's secrets (shared by the nodes of one archive); ``GET
/login/oidc/callback`` checks ``state``, exchanges the code at the token endpoint from the
server (with the client's secret, if it has one), checks the ID token (its ``nonce``) and the
access token like any bearer token, and starts the same session as a password login: the
viewer then works exactly as in that mode, and no token ever reaches the browser's scripts.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import jwt
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from access import Principal
from access.credentials import Credentials
from access.oidc import (
    OidcVerifier,
    ProviderUnavailableError,
    TokenRefusedError,
    code_word,
    pkce_challenge,
)
from api.audited import note_audit
from api.security import PUBLIC
from api.session import login_page, safe_next, set_session_cookie
from audit import Action

log = logging.getLogger(__name__)

LOGIN = "/login/oidc"
CALLBACK = "/login/oidc/callback"
STATE_COOKIE = "pacsnode_oidc"
_STATE_SECONDS = 600
_RETRY_AFTER = "10"

_CONTINUE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pacsnode: logged in</title>
<meta http-equiv="refresh" content="0;url={url}"><link rel="icon" href="data:,"></head>
<body><p>Logged in. <a href="{url}">Continue</a>.</p></body></html>
"""
"""The callback's answer: a page of the node that moves on by itself. A redirect would keep
the navigation the provider's (cross-site), and a browser does not send the ``SameSite=Strict``
session cookie on it: the first page would find nobody logged in."""


class OidcBearer:
    """The verifier as the door uses it: a provider that cannot be reached is ``503``."""

    def __init__(self, verifier: OidcVerifier) -> None:
        self.verifier = verifier

    def cached(self, token: str, remote: str) -> Principal | None:
        return self.verifier.cached(token, remote)

    def verify(self, token: str, remote: str) -> Principal | None:
        try:
            return self.verifier.verify(token, remote)
        except ProviderUnavailableError:
            raise HTTPException(
                503,
                "the OpenID Connect provider cannot be reached to check the token; try again later",
                headers={"Retry-After": _RETRY_AFTER},
            ) from None


def state_key(node_key: bytes) -> bytes:
    """The key signing a login's state cookie, derived from the node's HMAC key (so the
    nodes of one archive share it, and it is never the key itself)."""
    return hmac.new(node_key, b"pacsnode oidc login state", hashlib.sha256).digest()


@dataclass(frozen=True)
class OidcLogin:
    """What the login needs: the verifier (and its provider), where sessions start, the key
    of the state cookie and the client's secret (``None``: a public client)."""

    verifier: OidcVerifier
    credentials: Credentials
    state_key: bytes
    client_secret: str | None
    https: bool = False
    """The node is configured for HTTPS: its session cookie is always ``Secure``."""

    def redirect_uri(self, request: Request) -> str:
        configured = self.verifier.settings.redirect_url
        return configured or str(request.base_url).rstrip("/") + CALLBACK


def oidc_router(login: OidcLogin | None) -> APIRouter:
    """``/login/oidc`` and its callback (``404`` while the login is not set up)."""
    router = APIRouter(tags=["session"], include_in_schema=False, dependencies=[Depends(PUBLIC)])

    def configured() -> OidcLogin:
        if login is None:
            raise HTTPException(
                404,
                "login through OpenID Connect is not set up on this node (access.methods "
                "oidc, access.oidc.client_id)",
            )
        return login

    @router.get(LOGIN)
    def start(request: Request, next: Annotated[str, Query(max_length=2048)] = "/") -> Response:
        """Off to the provider, with a new state, nonce and PKCE verifier."""
        flow = configured()
        settings = flow.verifier.settings
        try:
            metadata = flow.verifier.provider.metadata()
        except ProviderUnavailableError:
            return _unavailable(flow, next)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        redirect_uri = flow.redirect_uri(request)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = metadata.authorization_endpoint
        answer = Response(
            status_code=303,
            headers={
                "Location": f"{endpoint}{'&' if '?' in endpoint else '?'}{query}",
                "Cache-Control": "no-store",
            },
        )
        remembered = {
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
            "next": safe_next(next),
            "redirect_uri": redirect_uri,
            "exp": int(time.time()) + _STATE_SECONDS,
        }
        answer.set_cookie(
            STATE_COOKIE,
            jwt.encode(remembered, flow.state_key, algorithm="HS256"),
            max_age=_STATE_SECONDS,
            httponly=True,
            secure=request.url.scheme == "https",
            samesite="lax",  # it must come back with the provider's redirect (cross-site)
            path=LOGIN,
        )
        return answer

    @router.get(CALLBACK)
    def callback(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
    ) -> Response:
        """Back from the provider: the code becomes a session."""
        flow = configured()
        remote = request.client.host if request.client else ""
        remembered = _remembered(flow, request.cookies.get(STATE_COOKIE), state)
        note_audit(request, Action.LOGIN, target="oidc")  # refused or failed unless changed
        if remembered is None:
            log.warning("OpenID Connect login from %s: no or another login's state", remote)
            return _done(_page(flow, "/", "This login expired or was not started here.", 400))
        target = remembered["next"]
        if error is not None or not code:
            reason = "no code" if error is None else code_word(error)
            log.warning("OpenID Connect login from %s: the provider said %s", remote, reason)
            return _done(_page(flow, target, f"The provider did not log you in ({reason}).", 401))
        try:
            principal = _log_in(flow, code, remembered, remote)
        except ProviderUnavailableError as exc:
            log.error("OpenID Connect login from %s: %s", remote, exc)
            return _done(_unavailable(flow, target))
        except TokenRefusedError as exc:
            log.warning("OpenID Connect login from %s refused: %s", remote, exc)
            return _done(_page(flow, target, f"The login was refused: {exc}.", 401))
        if not principal.permissions:
            log.warning("OpenID Connect login of %s from %s: no role", principal.name, remote)
            note_audit(request, Action.LOGIN, target="oidc", actor=principal.name)
            message = "Your account has no role on pacsnode: ask its administrator."
            return _done(_page(flow, target, message, 403))
        cookie = flow.credentials.start_session(principal)
        log.info("%s logged in through OpenID Connect from %s", principal.name, remote or "?")
        note_audit(request, Action.LOGIN, target="oidc", actor=principal.name)
        url = html.escape(target)
        answer = HTMLResponse(_CONTINUE.format(url=url), headers={"Cache-Control": "no-store"})
        set_session_cookie(
            answer, cookie, request, flow.credentials.settings.session_hours, flow.https
        )
        return _done(answer)

    return router


def _remembered(flow: OidcLogin, cookie: str | None, state: str | None) -> dict[str, Any] | None:
    """The login's state cookie, if it is this node's, unexpired, and for this ``state``."""
    if not cookie or not state:
        return None
    try:
        remembered: dict[str, Any] = jwt.decode(cookie, flow.state_key, algorithms=["HS256"])
    except jwt.PyJWTError:
        return None
    if not hmac.compare_digest(str(remembered.get("state", "")), state):
        return None
    return remembered


def _log_in(flow: OidcLogin, code: str, remembered: dict[str, Any], remote: str) -> Principal:
    """The caller a login's code stands for: the code exchanged, the ID token checked for this
    login (nonce, audience: the client), the access token as any bearer token is."""
    settings = flow.verifier.settings
    tokens = flow.verifier.provider.exchange(
        code=code,
        redirect_uri=remembered["redirect_uri"],
        code_verifier=remembered["verifier"],
        client_id=settings.client_id,
        client_secret=flow.client_secret,
    )
    id_token, access_token = tokens.get("id_token"), tokens.get("access_token")
    if not isinstance(id_token, str) or not isinstance(access_token, str):
        raise TokenRefusedError("the provider sent no ID token or no access token")
    identity = flow.verifier.decode(id_token, settings.client_id, nonce=remembered["nonce"])
    audiences = identity["aud"] if isinstance(identity["aud"], list) else [identity["aud"]]
    if len(audiences) > 1 and identity.get("azp") != settings.client_id:
        raise TokenRefusedError("the ID token was issued to another client (azp)")
    try:
        claims = flow.verifier.decode(access_token, settings.audience)
    except TokenRefusedError as exc:
        raise TokenRefusedError(
            f"the access token does not pass ({exc}): see docs/access.md, access.oidc.audience"
        ) from None
    if claims["sub"] != identity["sub"]:
        raise TokenRefusedError("the ID token and the access token name other people")
    principal = flow.verifier.principal(claims)
    return Principal(
        principal.name, principal.permissions, principal.projects, principal.method, remote
    )


def _page(flow: OidcLogin, target: str, message: str, status: int) -> Response:
    return login_page(flow.credentials.settings, target, message, status)


def _unavailable(flow: OidcLogin, target: str) -> Response:
    answer = _page(flow, target, "The login provider cannot be reached: try again later.", 503)
    answer.headers["Retry-After"] = _RETRY_AFTER
    return answer


def _done(answer: Response) -> Response:
    """A finished login's state cookie is spent: the browser forgets it."""
    answer.delete_cookie(STATE_COOKIE, path=LOGIN)
    return answer
