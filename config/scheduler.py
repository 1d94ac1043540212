"""Settings of the node's job scheduler (apscheduler, job store in the catalog)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SchedulerSettings(BaseModel):
    """The scheduler that runs jobs such as the Orthanc sync (section ``[scheduler]``)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(
        default=True,
        description=(
            "Run scheduled jobs in this node. Turn off on nodes that share a catalog but "
            "should never run jobs."
        ),
    )
    lease_seconds: float = Field(
        default=60.0,
        ge=5,
        description=(
            "A run (or the audit forwarder's lease) whose node has not renewed it for this "
            "long is taken for dead, so another node may take over."
        ),
    )
