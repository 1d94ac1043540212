"""The dashboard's pages under ``/``: server-rendered shells (Jinja2) whose numbers and
charts come from the same ``/api`` JSON that scripts use, read by the page's own script.

A page holds no data of the archive, so its route is public; a visitor who may not see it
is sent to the login page (or told their role does not include it), and the ``/api`` calls
behind it check the caller's permission and projects as every route does. Scripts and
styles are files of the node (``/dashboard/static/``; ECharts from ``vendor/echarts``,
fetched by ``scripts/setup.sh``): the Content-Security-Policy allows no inline script, and
nothing is loaded from outside the node (hospitals run offline).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from access import Permission, Principal
from api.security import PUBLIC
from dashboard.i18n import LANGUAGE_COOKIE, LANGUAGES, language_of, strings

_HERE = Path(__file__).parent
STATIC: Final = "/dashboard/static"
ECHARTS_DIR: Final = _HERE.parent / "vendor" / "echarts"


@dataclass(frozen=True)
class Page:
    """One page: its name (template, nav key), path, and the permission its data needs."""

    name: str
    path: str
    permission: Permission


OVERVIEW: Final = Page("overview", "/", Permission.DICOMWEB_READ)
DATASETS: Final = Page("datasets", "/datasets", Permission.LABELS_READ)
PAGES: Final[tuple[Page, ...]] = (
    OVERVIEW,
    Page("studies", "/studies", Permission.DICOMWEB_READ),
    DATASETS,
    Page("cohorts", "/cohorts", Permission.COHORTS_READ),
    Page("review", "/review", Permission.LABELS_REVIEW),
    Page("system", "/system", Permission.SYSTEM),
)
"""The pages, in the order of the navigation bar; each has ``templates/<name>.html`` (which
extends ``base.html``) and its script ``static/<name>.js``."""

_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: Request, page: Page, template: str | None = None, **context: object
) -> Response:
    """``page`` for the caller, in their language; a visitor who may not see it is sent to
    log in, one whose role lacks it gets a page saying so (403)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    allowed = principal.allows(page.permission)
    language = language_of(request)
    text = strings(language)
    html = _templates.get_template(template or f"{page.name}.html").render(
        page=page,
        pages=[p for p in PAGES if principal.allows(p.permission)],
        allowed=allowed,
        permissions=" ".join(sorted(p.value for p in Permission if principal.allows(p))),
        user=principal.name if principal.method != "none" else "",
        lang=language,
        other_lang=next(other for other in LANGUAGES if other != language),
        t=text,
        strings=json.dumps(text, ensure_ascii=False).replace("</", "<\\/"),
        static=STATIC,
        **context,
    )
    answer = HTMLResponse(html, status_code=200 if allowed else 403)
    answer.headers["Cache-Control"] = "no-store"
    if request.query_params.get("lang") in LANGUAGES:
        answer.set_cookie(LANGUAGE_COOKIE, language, max_age=365 * 86400, samesite="strict")
    return answer


def dashboard_router() -> APIRouter:
    """The pages and their static files (public: they hold no data)."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(PUBLIC)])

    for page in PAGES:
        router.add_api_route(page.path, _page_route(page), methods=["GET"], name=page.name)

    @router.get("/datasets/{task}")
    def dataset(request: Request, task: str) -> Response:
        """One label task's dataset page (the datasets page's script reads its data)."""
        return render(request, DATASETS, template="dataset.html", task=task)

    @router.get(f"{STATIC}/{{name}}")
    def static_file(name: str) -> FileResponse:
        """The dashboard's scripts and styles, and ECharts."""
        folder = ECHARTS_DIR if name.startswith("echarts") else _HERE / "static"
        candidate = folder / name
        if "/" in name or name.startswith(".") or not candidate.is_file():
            raise HTTPException(404, f"no file {name!r} (ECharts comes with scripts/setup.sh)")
        return FileResponse(candidate, headers={"Cache-Control": "no-cache"})

    return router


def _page_route(page: Page) -> Callable[[Request], Response]:
    def show(request: Request) -> Response:
        return render(request, page)

    show.__doc__ = f"The {page.name} page."
    return show
