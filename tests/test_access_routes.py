"""Every HTTP route states the permission it needs, and the node enforces it.

The app is walked as FastAPI serves it (``iter_route_contexts``: routers are included lazily,
so ``app.routes`` alone would miss them and this test would pass without checking anything).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from access.credentials import Credentials
from api.security import PUBLIC, Require
from config import load_settings
from dashboard import PAGES
from node.app import Node

PUBLIC_PATHS = {
    "/healthz",
    "/",
    "/docs",
    "/openapi.json",
    "/docs/assets/{name}",
    "/login",
    "/login/oidc",
    "/login/oidc/callback",
    "/logout",
    "/viewer",
    "/viewer/app-config.js",
    "/viewer/{path:path}",
    "/dashboard/static/{name}",
    "/datasets/{task}",
    *(page.path for page in PAGES),
}
"""Routes anyone may reach: they carry no data of the archive (a dashboard page is a shell
whose data comes from ``/api``; it sends a visitor to log in)."""


def requirements(dependant: Dependant) -> set[Require]:
    found, stack = set(), [dependant]
    while stack:
        current = stack.pop()
        if isinstance(current.call, Require):
            found.add(current.call)
        stack.extend(current.dependencies)
    return found


def routes(app: FastAPI) -> Iterator[tuple[str, set[str], set[Require]]]:
    for context in iter_route_contexts(app.routes):
        route: Any = context.route if hasattr(context, "route") else context
        dependant = getattr(context, "dependant", None) or getattr(route, "dependant", None)
        path = getattr(context, "path", None) or route.path
        methods = set(getattr(context, "methods", None) or getattr(route, "methods", ()) or ())
        if isinstance(route, Mount) or dependant is None:
            raise AssertionError(f"{path}: a mounted app escapes the permission check")
        yield path, methods, requirements(dependant)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("access")
    running = Node(
        load_settings(
            data_dir=folder / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            access={"methods": ["token"]},
        )
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def app_of(node: Node) -> FastAPI:
    app = node._http.config.app
    assert isinstance(app, FastAPI)
    return app


def test_every_route_states_exactly_one_permission(node: Node) -> None:
    seen = list(routes(app_of(node)))
    assert len(seen) > 40  # the DICOMweb, report, cohort and admin routes were all found
    for path, methods, stated in seen:
        assert len(stated) == 1, f"{sorted(methods)} {path} states {stated or 'no permission'}"
        if PUBLIC in stated:
            assert path in PUBLIC_PATHS, f"{path} is public but not listed as such"


def test_a_route_without_a_permission_is_found(node: Node) -> None:
    """The walk sees routes of included routers: one added without a permission fails."""
    from fastapi import APIRouter

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    router = APIRouter()

    @router.get("/forgotten")
    def forgotten() -> None: ...

    app.include_router(router, prefix="/api")
    assert [(path, stated) for path, _, stated in routes(app)] == [("/api/forgotten", set())]


def fill(path: str) -> str:
    return (
        path.replace("{path:path}", "x")
        .replace("{kind}", "patient")
        .replace("{name}", "x")
        .replace("{frame}", "1")
        .replace("{frame_list}", "1")
        .replace("{task}", "lung_nodule")
        .replace("{report_id}", "1")
        .replace("{label_id}", "1")
    )


def call(base: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = base + fill(path)
    for name in ("{study}", "{series}", "{sop}", "{study_uid}"):
        url = url.replace(name, "1.2.3")
    url = url.replace("{ref}", "c").replace("{pseudonym}", "P1")
    return httpx.request(method, url, headers=headers, timeout=30, follow_redirects=False)


def test_anonymous_callers_and_callers_without_the_permission_are_refused(
    node: Node, tmp_path: Path
) -> None:
    credentials = Credentials(node.core.db, node.settings.access)
    viewer = credentials.create_token("viewer-only", ["viewer"], None, "test")
    base = f"http://127.0.0.1:{node.http_port}"
    for path, methods, stated in routes(app_of(node)):
        (requirement,) = stated
        if requirement.permission is None:
            continue
        for method in methods - {"HEAD"}:
            anonymous = call(base, method, path, {})
            assert anonymous.status_code == 401, (method, path, anonymous.status_code)
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            as_viewer = call(base, method, path, {"Authorization": f"Bearer {viewer}"})
            if requirement.permission.value == "dicomweb.read":
                assert as_viewer.status_code not in (401, 403), (method, path)
            else:
                assert as_viewer.status_code == 403, (method, path, as_viewer.status_code)
