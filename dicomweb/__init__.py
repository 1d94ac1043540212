"""DICOMweb door: QIDO-RS, WADO-RS, STOW-RS and WADO-URI (PS3.18), and the bundled viewer.

The routers are plain ``APIRouter``s; the composition root mounts them (``node/app.py``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from config import DicomwebSettings
from dicomweb.context import PREFIX, DicomwebContext
from dicomweb.media import check_header_lengths
from dicomweb.qido import create_qido_router
from dicomweb.stow import STOW_FAILURE_REASON, FailureReason, create_stow_router
from dicomweb.viewer import VIEWER_PATH, create_viewer_router
from dicomweb.wado import create_wado_router
from dicomweb.wado_uri import create_wado_uri_router

DEFAULT_VIEWER_DIR = Path(__file__).resolve().parents[1] / "viewer" / "dist"


def create_routers(context: DicomwebContext) -> list[tuple[str, APIRouter]]:
    """``(prefix, router)`` pairs: DICOMweb under ``/dicom-web``, the viewer at ``/viewer``."""
    services = APIRouter(dependencies=[Depends(check_header_lengths)])
    for router in (
        create_qido_router(context),
        create_wado_router(context),
        create_stow_router(context),
        create_wado_uri_router(context),
    ):
        services.include_router(router)
    routers = [(PREFIX, services)]
    if context.settings.viewer:
        routers.append(
            ("", create_viewer_router(context.settings.viewer_dir or DEFAULT_VIEWER_DIR))
        )
    return routers


def viewer_home(settings: DicomwebSettings) -> str | None:
    """The viewer's study list, when the node serves an installed viewer."""
    dist = settings.viewer_dir or DEFAULT_VIEWER_DIR
    return f"{VIEWER_PATH}/" if settings.viewer and (dist / "index.html").is_file() else None


__all__ = [
    "PREFIX",
    "STOW_FAILURE_REASON",
    "VIEWER_PATH",
    "DicomwebContext",
    "FailureReason",
    "create_routers",
    "viewer_home",
]
