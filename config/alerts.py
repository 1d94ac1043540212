"""Settings of the node's alerts (section ``[alerts]``, environment ``PACSNODE_ALERTS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class AlertSettings(BaseModel):
    """When the node raises an alert, how often it looks, and where it sends them."""

    model_config = {"extra": "forbid"}

    interval: float = Field(
        15.0,
        gt=0,
        description=(
            "Seconds between two looks at the node: the rules are evaluated and a sample of "
            "CPU, memory and ingest counters is kept (the System page's chart: 30 minutes)."
        ),
    )
    disk_percent: float = Field(
        90.0,
        ge=0,
        le=100,
        description="Alert when the filesystem of the data folder is more than this % used.",
    )
    job_failures: int = Field(
        3,
        ge=1,
        description="Alert when a scheduled job's last runs failed this many times in a row.",
    )
    ingest_errors_per_minute: float = Field(
        10.0,
        ge=0,
        description=(
            "Alert when instances are refused or fail at more than this rate (per minute, "
            "over ingest_window)."
        ),
    )
    ingest_window: float = Field(
        300.0, gt=0, description="Seconds over which ingest rates are measured."
    )
    webhook_url: SecretStr | None = Field(
        None,
        description=(
            "URL each alert is POSTed to as JSON when it starts and when it ends (none: no "
            "webhook). It may hold a secret: give it in the environment. Never logged."
        ),
    )
    webhook_token: SecretStr | None = Field(
        None,
        description=(
            "Sent as Authorization: Bearer to the webhook; give it in the environment. "
            "Never logged."
        ),
    )
    webhook_timeout: float = Field(
        5.0, gt=0, description="Seconds a webhook call may take; the node never waits for it."
    )
