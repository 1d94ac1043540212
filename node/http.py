"""The node's HTTP application: health, metrics, and the routers of the front doors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI, Response
from fastapi.params import Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from catalog import CatalogUnavailableError, Database
from node.metrics import NodeMetrics


def create_app(
    *,
    db: Database,
    blob_root: Path,
    metrics: NodeMetrics,
    routers: Sequence[tuple[str, APIRouter]] = (),
    dependencies: Sequence[Depends] = (),
) -> FastAPI:
    """Build the FastAPI app; ``dependencies`` (e.g. authentication) guard every router."""
    app = FastAPI(title="pacsnode", summary="DICOM archive node")

    @app.get("/healthz", tags=["system"])
    def healthz(response: Response) -> dict[str, str]:
        """``ok`` when the catalog answers and the blob store is writable, else 503."""
        checks = {"catalog": "ok", "storage": "ok"}
        try:
            db.check()
        except CatalogUnavailableError as exc:
            checks["catalog"] = str(exc)
        if not (blob_root.is_dir() and os.access(blob_root, os.W_OK)):
            checks["storage"] = f"blob folder {blob_root} is not writable"
        healthy = all(value == "ok" for value in checks.values())
        response.status_code = 200 if healthy else 503
        return {"status": "ok" if healthy else "unavailable", **checks}

    @app.get("/metrics", tags=["system"])
    def prometheus_metrics() -> Response:
        """Prometheus text exposition of the node's metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for prefix, router in routers:
        app.include_router(router, prefix=prefix, dependencies=list(dependencies))
    return app
