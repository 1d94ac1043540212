"""Settings of the DICOMweb door (section ``[dicomweb]``, environment ``PACSNODE_DICOMWEB__*``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator


class DicomwebSettings(BaseModel):
    """QIDO-RS / WADO-RS / STOW-RS / WADO-URI and the bundled viewer."""

    public_url: str | None = Field(
        None,
        description=(
            "URL of the DICOMweb root as clients reach it (e.g. "
            "https://pacs.example.org/dicom-web), used in RetrieveURL and BulkDataURI. "
            "Empty: built from the request and, if trusted, its Forwarded/X-Forwarded-* headers."
        ),
    )
    trust_forwarded_headers: bool = Field(
        True,
        description=(
            "Build URLs from Forwarded / X-Forwarded-Proto/-Host/-Prefix headers set by a "
            "reverse proxy (ignored when public_url is set)."
        ),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Other origins (scheme://host[:port]) whose pages may call DICOMweb from a "
            'browser (CORS), e.g. a separately hosted OHIF, or ["*"]. Empty: none (the '
            "node's own viewer is same-origin). Such callers authenticate with a bearer "
            "token: the session cookie is never sent or accepted across origins."
        ),
    )
    max_results: int = Field(
        1000,
        ge=1,
        description=(
            "Most results one QIDO-RS answer returns; a larger or missing limit is capped "
            "and the answer says more are available (Warning: 299)."
        ),
    )
    max_stow_bytes: int = Field(
        2_000_000_000,
        ge=1,
        description=(
            "Largest STOW-RS request body accepted. The body is spooled to a file encrypted "
            "with a key held only in memory (it is not de-identified yet); memory holds one "
            "instance at a time."
        ),
    )
    max_stow_instances: int = Field(
        50_000,
        ge=1,
        description="Most instances (parts) in one STOW-RS request; more: 413.",
    )
    spool_dir: Path | None = Field(
        None,
        description=(
            "Folder of the encrypted spool files of STOW-RS requests and large C-STORE data "
            "sets being received (removed when the transfer ends; pacsnode verify finds "
            "those a crash left). Default: <data_dir>/spool."
        ),
    )
    gzip_min_bytes: int = Field(
        1024,
        ge=0,
        description="JSON answers this large or larger are gzipped for clients accepting it.",
    )
    max_frames_per_request: int = Field(
        1000,
        ge=1,
        description=(
            "Most frame numbers in one WADO-RS /frames request (a longer list is 400); "
            "the frames are sent one by one as they are made."
        ),
    )
    thumbnail_size: int = Field(
        128, ge=16, le=1024, description="Longest side in pixels of /thumbnail images."
    )
    viewer: bool = Field(True, description="Serve the bundled OHIF viewer at /viewer.")
    viewer_dir: Path | None = Field(
        None,
        description=(
            "Folder of the prebuilt OHIF viewer (its dist/). Default: viewer/dist in the "
            "source tree, filled by scripts/setup.sh."
        ),
    )

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, values: list[str]) -> list[str]:
        """Origins as browsers send them (``Origin`` is compared as a string)."""
        origins = []
        for value in values:
            origin = value.strip().rstrip("/").lower()
            parts = urlsplit(origin)
            if origin != "*" and (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path
                or parts.query
                or parts.fragment
                or parts.username is not None
            ):
                raise ValueError(
                    f"cors_origins: {value!r} is not an origin such as https://viewer.example.org "
                    "(scheme, host and optional port, no path) or *"
                )
            origins.append(origin)
        return origins

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value
