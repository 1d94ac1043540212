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
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from access.credentials import Credentials
from api.security import PUBLIC, SESSION_COOKIE, Authenticator

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pacsnode: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto}}
label{{display:block;margin-top:1rem}}input{{width:100%;padding:.4rem}}
button{{margin-top:1.2rem;padding:.5rem 1.2rem}}.error{{color:#b00020}}</style></head>
<body><h1>pacsnode</h1>{message}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>User <input name="username" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label>
<button type="submit">Log in</button></form></body></html>
"""


def _safe_next(target: str) -> str:
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
    def login_page(next: str = "/") -> HTMLResponse:
        return HTMLResponse(
            _PAGE.format(message="", next=html.escape(_safe_next(next))),
            headers={"Cache-Control": "no-store"},
        )

    @router.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
        next: Annotated[str, Form(max_length=2048)] = "/",
    ) -> Response:
        remote = request.client.host if request.client else ""
        principal = await run_in_threadpool(credentials.verify_password, username, password, remote)
        if principal is None:
            log.warning("failed login from %s", remote or "?")
            message = '<p class="error">Wrong user name or password.</p>'
            return HTMLResponse(
                _PAGE.format(message=message, next=html.escape(_safe_next(next))),
                status_code=401,
                headers={"Cache-Control": "no-store"},
            )
        cookie = await run_in_threadpool(credentials.start_session, principal)
        log.info("%s logged in from %s", principal.name, remote or "?")
        answer = RedirectResponse(_safe_next(next), status_code=303)
        answer.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(credentials.settings.session_hours * 3600),
            httponly=True,
            secure=https or request.url.scheme == "https",
            samesite="strict",
            path="/",
        )
        return answer

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            authenticator.forget(cookie)
            await run_in_threadpool(credentials.end_session, cookie)
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    return router
