"""Settings of the audit trail (section ``[audit]``, environment ``PACSNODE_AUDIT__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator


class SyslogSettings(BaseModel):
    """A syslog collector that receives every audit event as a DICOM audit message
    (PS3.15 A.5) in an RFC 5424 message over TLS (RFC 5425 framing)."""

    model_config = {"extra": "forbid"}

    host: str | None = Field(None, description="Host of the collector; unset: no syslog.")
    port: int = Field(6514, ge=1, le=65535, description="TCP port of the collector (TLS).")
    cafile: Path | None = Field(
        None,
        description=(
            "PEM file of the CA certificates the collector's certificate must chain to "
            "(unset: the system's CAs). The collector's name is always checked."
        ),
    )
    certfile: Path | None = Field(
        None, description="PEM file of the node's client certificate, when the collector asks."
    )
    keyfile: Path | None = Field(None, description="PEM file of the client certificate's key.")
    keyfile_password: SecretStr | None = Field(
        None,
        description="Password of an encrypted keyfile; give it in the environment. Never logged.",
    )
    app_name: str = Field("pacsnode", max_length=48, description="APP-NAME of each message.")
    queue_size: int = Field(
        10_000,
        ge=1,
        description=(
            "Messages kept while the collector is unreachable; beyond it the oldest are "
            "dropped (the catalog keeps every event; `pacsnode audit export` resends them)."
        ),
    )

    @model_validator(mode="after")
    def _key_with_cert(self) -> SyslogSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("audit.syslog: give certfile and keyfile together")
        return self


class AuditSettings(BaseModel):
    """Where audit events go besides the catalog, which keeps every one."""

    model_config = {"extra": "forbid"}

    source_id: str = Field(
        "pacsnode",
        description="AuditSourceIdentification of the DICOM audit messages (A.5.3.3).",
    )
    enterprise_site_id: str | None = Field(
        None, description="Audit Enterprise Site ID of the messages (the hospital's name)."
    )
    syslog: SyslogSettings = Field(default_factory=lambda: SyslogSettings.model_validate({}))
