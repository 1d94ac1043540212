"""The node's HTTP application: health, metrics, the API pages, and the routers of the front
doors."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from access import Permission
from api.audited import AuditMiddleware
from api.headers import DicomwebCors, SecurityHeaders, script_hashes
from api.security import PUBLIC, Authenticator, require
from audit import AuditTrail
from catalog import CatalogUnavailableError, Database

# Swagger UI's JavaScript and CSS (npm swagger-ui-dist), fetched by scripts/setup.sh
SWAGGER_UI_DIR = Path(__file__).resolve().parents[1] / "vendor" / "swagger-ui"
DOCS_ASSETS = "/docs/assets"

log = logging.getLogger(__name__)


def create_app(
    *,
    db: Database,
    blob_root: Path,
    registry: CollectorRegistry,
    authenticator: Authenticator,
    audit: AuditTrail,
    routers: Sequence[tuple[str, APIRouter]] = (),
    min_free_bytes: int = 0,
    storage_check: Callable[[], None] | None = None,
    pages: Sequence[str] = (),
    hsts_max_age: int = 0,
    csp_report_uri: str | None = None,
    cors: tuple[str, Sequence[str]] | None = None,
) -> FastAPI:
    """Build the FastAPI app: the one HTTP door of a node. Every route states its permission
    (:mod:`api.security`); ``/`` is the dashboard's overview (a router of ``routers``).

    Every answer carries the security headers of :mod:`api.headers`; the inline scripts of
    ``pages`` (HTML served by the routers, e.g. the viewer's) and of the API page are the
    only ones its Content-Security-Policy allows. ``cors``: a path prefix and the other
    origins allowed to call it from a browser. ``storage_check``: asks a blob store that is
    not the ``blob_root`` folder (an S3 bucket) whether it answers; an ``OSError`` if not.
    """
    app = FastAPI(
        title="pacsnode",
        summary="DICOM archive node",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.authenticator = authenticator
    api_page = _add_api_pages(app, SWAGGER_UI_DIR)

    @app.get("/healthz", tags=["system"], dependencies=[Depends(PUBLIC)])
    def healthz(response: Response) -> dict[str, str]:
        """``ok`` (200) when the catalog answers and the blob store is writable with at least
        ``health_min_free_bytes`` free; else 503, ``unavailable`` (catalog or blob store
        down) or ``degraded`` (the disk is nearly full: instances would be refused)."""
        checks = {"catalog": "ok", "storage": "ok"}
        status = "ok"
        try:
            db.check()
        except CatalogUnavailableError as exc:
            checks["catalog"] = str(exc)
        if storage_check is not None:
            try:
                storage_check()
            except OSError as exc:
                checks["storage"] = exc.strerror or str(exc)
        elif not (blob_root.is_dir() and os.access(blob_root, os.W_OK)):
            checks["storage"] = f"blob folder {blob_root} is not writable"
        elif min_free_bytes and (free := shutil.disk_usage(blob_root).free) < min_free_bytes:
            checks["storage"] = (
                f"{free} bytes free for blobs, under health_min_free_bytes ({min_free_bytes})"
            )
            status = "degraded"
        if checks["catalog"] != "ok" or (checks["storage"] != "ok" and status == "ok"):
            status = "unavailable"
        response.status_code = 200 if status == "ok" else 503
        return {"status": status, **checks}

    @app.get("/metrics", tags=["system"], dependencies=[Depends(require(Permission.SYSTEM))])
    def prometheus_metrics() -> Response:
        """Prometheus text exposition of the node's metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for prefix, router in routers:
        app.include_router(router, prefix=prefix)
    app.add_middleware(AuditMiddleware, trail=audit)
    if cors is not None and cors[1]:
        app.add_middleware(DicomwebCors, prefix=cors[0], origins=cors[1])
    app.add_middleware(  # the outermost: CORS answers carry the headers too
        SecurityHeaders,
        inline_scripts=[hash for page in (api_page, *pages) for hash in script_hashes(page)],
        hsts_max_age=hsts_max_age,
        report_uri=csp_report_uri,
    )
    return app


def _add_api_pages(app: FastAPI, assets: Path) -> str:
    """Swagger UI at ``/docs`` with its JavaScript and CSS served by the node itself (FastAPI's
    default page loads them from a CDN and stays blank without internet); its HTML."""
    installed = (assets / "swagger-ui-bundle.js").is_file()
    files = StaticFiles(directory=assets, check_dir=False)
    openapi_url = "/openapi.json"
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{app.title} - API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        # no badge from Swagger's online validator: it would send the API's address out
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()  # the same every time: its inline script is hashed once

    @app.get(openapi_url, include_in_schema=False, dependencies=[Depends(PUBLIC)])
    def openapi() -> JSONResponse:
        """The API's description (no data: anyone may read it)."""
        return JSONResponse(app.openapi())

    @app.get(f"{DOCS_ASSETS}/{{name}}", include_in_schema=False, dependencies=[Depends(PUBLIC)])
    async def swagger_asset(name: str, request: Request) -> Response:
        if not installed:
            raise HTTPException(404, "Swagger UI is not installed: run scripts/setup.sh")
        return await files.get_response(name, request.scope)

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(PUBLIC)])
    def swagger_ui() -> HTMLResponse:
        if not installed:
            raise HTTPException(
                404,
                "Swagger UI is not installed: run scripts/setup.sh "
                f"(the API description is at {openapi_url})",
            )
        return HTMLResponse(html)

    return html
