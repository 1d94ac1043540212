"""The login page: a user's name and password become a session cookie (``password`` method).

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` and ``Secure`` when HTTPS
is configured or the request came over HTTPS (its scheme; behind a trusted proxy, the
proxy's ``X-Forwarded-Proto``); it holds a random value whose sha256 the catalog keeps.
Failed logins are answered the same way whether the user exists or not, and slowly (argon2).
"""

from __future__ import annotations

import html
import logging
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from access.credentials import Credentials
from api.audited import note_audit
from api.security import PUBLIC, SESSION_COOKIE, Authenticator
from audit import Action
from config.access import AccessSettings

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pacsnode: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto}}
label{{display:block;margin-top:1rem}}input{{width:100%;padding:.4rem}}
button,.provider{{display:inline-block;margin-top:1.2rem;padding:.5rem 1.2rem}}
.provider{{border:1px solid #767676;border-radius:3px;background:#efefef;color:inherit;
text-decoration:none}}
.error{{color:#b00020}}</style></head>
<body><h1>pacsnode</h1>{message}{forms}</body></html>
"""
_USER_FORM = """<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>User <input name="username" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label>
<button type="submit">Log in</button></form>"""
_PROVIDER_LINK = '<p><a class="provider" href="/login/oidc?next={next}">Log in with {name}</a></p>'
_NO_LOGIN = (
    "<p>No login for people is set up on this node: <code>access.methods</code> needs "
    "<code>password</code>, or <code>oidc</code> with <code>access.oidc.client_id</code>. "
    "API tokens are for programs.</p>"
)


def login_page(
    settings: AccessSettings, next: str = "/", message: str = "", status_code: int = 200
) -> HTMLResponse:
    """The login page: the password form and the provider's button, as ``access`` has them,
    and ``message`` (text) above them."""
    target = safe_next(next)
    forms = []
    if "password" in settings.methods:
        forms.append(_USER_FORM.format(next=html.escape(target)))
    if "oidc" in settings.methods and settings.oidc.login:
        forms.append(
            _PROVIDER_LINK.format(
                next=html.escape(quote(target, safe="")),
                name=html.escape(settings.oidc.provider_name),
            )
        )
    shown = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        _PAGE.format(message=shown, forms="".join(forms) or _NO_LOGIN),
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def set_session_cookie(
    answer: Response, cookie: str, request: Request, hours: float, https: bool
) -> None:
    """The session cookie: ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS (always,
    when the node is configured for HTTPS: ``https``, even behind a proxy)."""
    answer.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(hours * 3600),
        httponly=True,
        secure=https or request.url.scheme == "https",
        samesite="strict",
        path="/",
    )


def safe_next(target: str) -> str:
    """Only a path of this node (never another site: an open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def session_router(
    credentials: Credentials, authenticator: Authenticator, *, https: bool = False
) -> APIRouter:
    """The login and logout routes; ``https``: the node is reached over HTTPS (its cookie is
    then always ``Secure``)."""
    router = APIRouter(tags=["session"], include_in_schema=False, dependencies=[Depends(PUBLIC)])

    @router.get("/login")
    def login_form(next: str = "/") -> HTMLResponse:
        return login_page(credentials.settings, next)

    @router.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
        next: Annotated[str, Form(max_length=2048)] = "/",
    ) -> Response:
        if "password" not in credentials.settings.methods:
            return login_page(credentials.settings, next, "No login with a password here.", 403)
        remote = request.client.host if request.client else ""
        principal = await run_in_threadpool(credentials.verify_password, username, password, remote)
        if principal is None:
            log.warning("failed login from %s", remote or "?")
            note_audit(request, Action.LOGIN, target=f"user:{username}", actor=username)
            return login_page(credentials.settings, next, "Wrong user name or password.", 401)
        cookie = await run_in_threadpool(credentials.start_session, principal)
        log.info("%s logged in from %s", principal.name, remote or "?")
        note_audit(request, Action.LOGIN, target="password", actor=principal.name)
        answer = RedirectResponse(safe_next(next), status_code=303)
        set_session_cookie(answer, cookie, request, credentials.settings.session_hours, https)
        return answer

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            note_audit(request, Action.LOGOUT)  # the cookie's principal, as PUBLIC found it
            authenticator.forget(cookie)
            await run_in_threadpool(credentials.end_session, cookie)
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    return router
