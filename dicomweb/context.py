"""What the DICOMweb routes share: the core's parts, the settings, and URL building."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, Response

from api.audited import note_audit
from audit import Action
from catalog import Database
from config import DicomwebSettings
from ingest import Ingestor
from storage import BlobStore

PREFIX = "/dicom-web"
"""Where the composition root mounts the DICOMweb routers."""

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_FORWARDED_PAIR = re.compile(r'(\w+)="?([^";,]+)"?')


@dataclass(frozen=True)
class DicomwebContext:
    """The core parts the routes use (one per node; no global state)."""

    db: Database
    blobs: BlobStore
    ingestor: Ingestor
    settings: DicomwebSettings
    spool_dir: Path | None = None
    """Folder of the encrypted STOW-RS spool files (``None``: the system's temporary folder)."""
    spool_threshold: int = 8 * 1024 * 1024
    """Parts larger than this go through ingest from the spool, in bounded memory."""

    def base_url(self, request: Request) -> str:
        """The DICOMweb root as the client reaches it, never the internal host behind a proxy.

        ``public_url`` when configured; else the request's own scheme and host, replaced by
        a reverse proxy's ``Forwarded`` or ``X-Forwarded-Proto/-Host/-Prefix`` headers when
        trusted.
        """
        if self.settings.public_url:
            return self.settings.public_url
        scheme = request.url.scheme
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        prefix = ""
        if self.settings.trust_forwarded_headers:
            headers = request.headers
            forwarded = dict(
                (k.lower(), v)
                for k, v in _FORWARDED_PAIR.findall(headers.get("forwarded", "").split(",")[0])
            )
            scheme = forwarded.get("proto") or _first(headers.get("x-forwarded-proto")) or scheme
            host = forwarded.get("host") or _first(headers.get("x-forwarded-host")) or host
            prefix = (_first(headers.get("x-forwarded-prefix")) or "").rstrip("/")
        return f"{scheme}://{host}{prefix}{request.scope.get('root_path', '')}{PREFIX}"

    def json_response(
        self,
        request: Request,
        body: str | bytes,
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str = "application/dicom+json",
    ) -> Response:
        """A JSON answer, gzip-compressed when the client accepts it and it is large."""
        data = body.encode() if isinstance(body, str) else body
        all_headers = {"Vary": "Accept-Encoding", **(headers or {})}
        accepts_gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
        if accepts_gzip and len(data) >= self.settings.gzip_min_bytes:
            data = gzip.compress(data, compresslevel=5)
            all_headers["Content-Encoding"] = "gzip"
        return Response(data, status_code=status_code, headers=all_headers, media_type=media_type)


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() if value else None


def caller_projects(request: Request) -> frozenset[str] | None:
    """The projects whose studies exist for the route's caller (``None``: all), as its
    ``api.security.Require`` dependency found them; a request without one sees none."""
    principal = getattr(request.state, "principal", None)
    return principal.projects if principal is not None else frozenset()


def caller_name(request: Request) -> str:
    """Who the route's caller is, for the audit trail."""
    principal = getattr(request.state, "principal", None)
    return str(principal.name) if principal is not None else "anonymous"


def audited_retrieve(service: str) -> Callable[[Request], None]:
    """A router dependency of WADO-RS or WADO-URI: each request counts in the caller's
    retrieve event of its study (one event per study and caller within the trail's window,
    not one per frame a viewer fetches)."""

    def note(request: Request) -> None:
        study = request.path_params.get("study") or request.query_params.get("studyUID")
        note_audit(
            request,
            Action.RETRIEVE,
            studies=(study,) if study else (),
            target=service,
            detail={"requests": 1},
            aggregate=True,
        )

    return note


def check_uid(name: str, value: str) -> str:
    """``value`` if it is a UID, else HTTP 400 naming the path parameter."""
    if len(value) > 64 or not _UID.fullmatch(value):
        raise HTTPException(400, f"{name} is not a valid UID")
    return value
