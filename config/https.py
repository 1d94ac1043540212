"""Settings of HTTPS on the HTTP port, and of a TLS-terminating reverse proxy in front of it
(section ``[https]``, environment ``PACSNODE_HTTPS__*``)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator


class HttpsSettings(BaseModel):
    """The HTTP port serves HTTPS when ``certfile`` and ``keyfile`` are set (and then only
    HTTPS: there is no plain-HTTP listener beside it)."""

    model_config = {"extra": "forbid"}

    certfile: Path | None = Field(
        None,
        description=(
            "PEM file of the server certificate, followed by its intermediate CA certificates. "
            "Set with keyfile, the HTTP port serves HTTPS only; reloaded on SIGHUP."
        ),
    )
    keyfile: Path | None = Field(None, description="PEM file of the certificate's private key.")
    keyfile_password_file: Path | None = Field(
        None,
        description="File holding the password of an encrypted keyfile (read at each load).",
    )
    keyfile_password: SecretStr | None = Field(
        None,
        description=(
            "Password of an encrypted keyfile; give it in the environment "
            "(PACSNODE_HTTPS__KEYFILE_PASSWORD), never in the config file. Never logged."
        ),
    )
    behind_proxy: bool = Field(
        False,
        description=(
            "A reverse proxy in front of the node terminates TLS: the node serves it plain "
            "HTTP, but HTTPS counts as configured (HSTS, Secure cookies, re-identification "
            "only over HTTPS) and a request is HTTPS when the proxy's X-Forwarded-Proto says so."
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description=(
            "Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-Proto and "
            "X-Forwarded-For the node believes (the request's scheme and the caller's "
            'address); ["*"]: any. Honoured while dicomweb.trust_forwarded_headers is on.'
        ),
    )
    hsts_max_age: int = Field(
        31_536_000,
        ge=0,
        description=(
            "max-age (seconds) of Strict-Transport-Security, sent on answers over HTTPS "
            "only; 0: no such header."
        ),
    )

    csp_report_uri: str | None = Field(
        None,
        description=(
            "Where browsers report Content-Security-Policy violations (report-uri), e.g. a "
            "collector of the hospital; empty: not reported."
        ),
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, values: list[str]) -> list[str]:
        for value in values:
            if value != "*":
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise ValueError(
                        f"https.trusted_proxies: {value!r} is not an IP address or network"
                    ) from None
        return values

    @field_validator("csp_report_uri")
    @classmethod
    def _check_report_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(r"(https?://|/)[^\s;,]*", value.strip()):
            raise ValueError(
                f"https.csp_report_uri {value!r} is not an http(s) URL or a path of this node"
            )
        return value.strip()

    @model_validator(mode="after")
    def _pairs(self) -> HttpsSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("https.certfile and https.keyfile are set together")
        if self.certfile is not None and self.behind_proxy:
            raise ValueError(
                "https.behind_proxy is for a node that serves plain HTTP to a TLS-terminating "
                "proxy: unset it, or unset https.certfile and https.keyfile"
            )
        if self.keyfile_password is not None and self.keyfile_password_file is not None:
            raise ValueError("give https.keyfile_password or https.keyfile_password_file, not both")
        return self

    @property
    def serves_tls(self) -> bool:
        """Whether the node's own HTTP port speaks TLS."""
        return self.certfile is not None

    @property
    def configured(self) -> bool:
        """Whether callers reach the node over HTTPS (its own, or a proxy's)."""
        return self.serves_tls or self.behind_proxy

    def key_password(self) -> str | None:
        """The keyfile's password, if one is configured (the file is read now)."""
        if self.keyfile_password is not None:
            return self.keyfile_password.get_secret_value()
        if self.keyfile_password_file is not None:
            return self.keyfile_password_file.read_text().rstrip("\r\n")
        return None
