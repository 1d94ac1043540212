"""Settings of the Orthanc sync job: which Orthanc to follow and how patiently."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator


class OrthancSyncSettings(BaseModel):
    """Follow a source Orthanc's ``/changes``; ingest each new stable study (``[orthanc_sync]``)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(default=False, description="Run the sync job on this node's scheduler.")
    url: str = Field(
        default="",
        description="Base URL of the source Orthanc's REST API, e.g. http://orthanc:8042.",
    )
    username: str | None = Field(default=None, description="HTTP Basic user of the source Orthanc.")
    password: SecretStr | None = Field(
        default=None, description="HTTP Basic password of the source Orthanc (never logged)."
    )
    interval: float = Field(
        default=60.0, gt=0, description="Seconds between the starts of two sync runs."
    )
    timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for one answer of Orthanc before retrying."
    )
    retries: int = Field(
        default=5,
        ge=0,
        description=(
            "Retries of a request that failed (Orthanc down, 5xx, timeout) before the run "
            "gives up; the next run resumes where it stopped."
        ),
    )
    backoff: float = Field(
        default=1.0,
        ge=0,
        description="Seconds before the first retry; doubled for each further one.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"orthanc_sync.url {value!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _url_when_enabled(self) -> OrthancSyncSettings:
        if self.enabled and not self.url:
            raise ValueError("orthanc_sync.enabled needs orthanc_sync.url")
        return self
