"""Who may associate with the node's DICOM AE, from where, how often at once and what they
see (``allowed_calling_aets``), and the DICOM TLS listener (section ``[dicom_tls]``)."""

from __future__ import annotations

import re
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, IPvAnyNetwork, field_validator, model_validator

from config.access import PROJECT_NAME
from config.aetitle import check_ae_title

_PROJECT = re.compile(PROJECT_NAME)


class CallingAE(BaseModel):
    """One entry of ``allowed_calling_aets``: an AE title, the hosts it may call from, its
    own association limit and the projects it sees.

    A plain string in the list is an entry with only the AE title (any host, every project),
    as the list held before entries had fields.
    """

    model_config = {"extra": "forbid", "frozen": True}

    ae_title: str = Field(description="The peer's AE title, as it calls (its Calling AE Title).")
    hosts: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description=(
            "Addresses or networks (e.g. 10.0.3.17, 10.0.3.0/24) the AE title may call from; "
            "from elsewhere it is rejected. Empty: any address (the AE title alone is trusted)."
        ),
    )
    max_associations: int | None = Field(
        None, ge=1, description="Associations of this AE title at once (empty: only the node's)."
    )
    projects: list[str] = Field(
        default_factory=list,
        description=(
            "Projects whose studies this AE title finds, retrieves and has committed, and that "
            "a new study it sends joins when no access.projects rule places it. Empty: every "
            "project."
        ),
    )
    require_tls: bool = Field(
        False, description="The AE title may only call over the DICOM TLS port."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_title(cls, value: Any) -> Any:
        return {"ae_title": value} if isinstance(value, str) else value

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("projects")
    @classmethod
    def _check_projects(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not _PROJECT.match(v)]
        if bad:
            raise ValueError(f"invalid project name {bad[0]!r}: letters, digits, '_', '.', '-'")
        return values

    def calls_from(self, address: str) -> bool:
        """Whether ``address`` (as the socket reports it) is one of ``hosts``."""
        if not self.hosts:
            return True
        try:
            peer = ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(peer, "ipv4_mapped", None)  # ::ffff:10.0.0.1 from a dual-stack socket
        return any(peer in net or (mapped is not None and mapped in net) for net in self.hosts)


class DicomTlsSettings(BaseModel):
    """DICOM over TLS (PS3.15 Annex B, the BCP 195 secure transport profiles) on a port of
    its own, beside the plain DICOM port (section ``[dicom_tls]``)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(False, description="Listen for DICOM over TLS.")
    host: str = Field(
        "127.0.0.1",
        description=(
            "Address the TLS port listens on. Beyond loopback it needs "
            "require_client_certificate or allowed_calling_aets."
        ),
    )
    port: int = Field(2762, ge=0, le=65535, description="DICOM TLS port (2762: IANA dicom-tls).")
    certificate: Path | None = Field(
        None, description="The node's certificate (PEM; its chain may follow it in the file)."
    )
    key: Path | None = Field(None, description="The certificate's private key (PEM, unencrypted).")
    ca_file: Path | None = Field(
        None, description="CA certificates (PEM) that client certificates must be issued by."
    )
    require_client_certificate: bool = Field(
        True,
        description=(
            "Refuse a peer without a certificate issued by ca_file (mutual TLS); false: any "
            "peer may connect (the node is authenticated, the peer is not)."
        ),
    )
    match_calling_aet: bool = Field(
        False,
        description=(
            "The client certificate must name the Calling AE Title, as its subject CN or a DNS "
            "subjectAltName; otherwise the association is rejected."
        ),
    )

    @model_validator(mode="after")
    def _complete(self) -> DicomTlsSettings:
        if not self.enabled:
            return self
        missing = [name for name in ("certificate", "key") if getattr(self, name) is None]
        if self.require_client_certificate and self.ca_file is None:
            missing.append("ca_file (require_client_certificate)")
        if missing:
            raise ValueError(f"dicom_tls.enabled needs dicom_tls.{', dicom_tls.'.join(missing)}")
        if self.match_calling_aet and not self.require_client_certificate:
            raise ValueError("dicom_tls.match_calling_aet needs require_client_certificate")
        return self
