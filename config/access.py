"""Settings of access control: how callers authenticate, what each role may do, and which
projects an arriving study joins (section ``[access]``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator

from config.aetitle import check_ae_title
from config.permissions import PERMISSIONS

AuthMethod = Literal["token", "password", "oidc"]

DEFAULT_ROLES: dict[str, list[str]] = {
    "viewer": ["dicomweb.read"],
    "uploader": ["dicomweb.write", "reports.write"],
    "researcher": [
        "dicomweb.read",
        "reports.read",
        "labels.read",
        "labels.review",
        "cohorts.read",
        "cohorts.write",
        "export",
    ],
    "admin": ["*"],
}
"""Role -> permissions; ``*`` is every permission (see ``access.Permission``)."""

PROJECT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""The JWT signature algorithms ``access.oidc.algorithms`` may name: public-key ones only."""
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def secure_url(url: str) -> bool:
    """An https URL, or plain http to a loopback address (as in tests): the provider's keys
    and a login's code travel over it."""
    parts = urlsplit(url)
    return (parts.scheme == "https" and bool(parts.netloc)) or (
        parts.scheme == "http" and parts.hostname in _LOOPBACK
    )


class ProjectRule(BaseModel):
    """One rule of ``access.projects``: a study joins ``project`` when an instance of it
    arrives matching every condition given (an empty rule matches everything).

    ``attribute`` / ``value`` read the header as received, before de-identification (e.g.
    ``InstitutionName = "General Hospital*"``); ``*`` and ``?`` are wildcards.
    """

    model_config = {"extra": "forbid", "frozen": True}

    project: str = Field(pattern=PROJECT_NAME, description="The project the study joins.")
    called_aet: str | None = Field(None, description="The AE title the sender called.")
    calling_aet: str | None = Field(None, description="The sender's AE title.")
    door: Literal["dimse", "stow", "sync", "folder"] | None = Field(
        None, description="How the instance arrived."
    )
    attribute: str | None = Field(
        None, description="A header attribute (keyword), as received, before de-identification."
    )
    value: str | None = Field(None, description="The value ``attribute`` must match.")

    @field_validator("called_aet", "calling_aet")
    @classmethod
    def _check_ae_title(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @model_validator(mode="after")
    def _attribute_with_value(self) -> ProjectRule:
        if (self.attribute is None) != (self.value is None):
            raise ValueError("a project rule names an attribute and its value together")
        return self


class OidcSettings(BaseModel):
    """OpenID Connect: bearer tokens from the hospital's identity provider (Keycloak, Entra
    ID), and the node's own login through it (section ``[access.oidc]``)."""

    model_config = {"extra": "forbid"}

    issuer: str = Field("", description="The provider's issuer URL (its `iss`).")
    audience: str = Field("", description="The `aud` an access token must carry for pacsnode.")
    roles_claim: str = Field("roles", description="Claim (dotted path) holding the caller's roles.")
    projects_claim: str = Field(
        "groups", description="Claim (dotted path) holding the caller's projects."
    )
    project_map: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Value of the projects claim -> project (`*`: every project), e.g. an Entra group "
            "ID or a Keycloak group path; other values are project names as they are."
        ),
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256"],
        description="Signature algorithms accepted (never `none` or an HMAC).",
    )
    client_id: str = Field(
        "",
        description=(
            "The node's client ID at the provider, for the browser login (`/login/oidc`); "
            "empty: bearer tokens only."
        ),
    )
    client_secret: SecretStr | None = Field(
        None,
        description=(
            "The client's secret (confidential client; give it in the environment, never "
            "logged). None: a public client (PKCE only)."
        ),
    )
    client_secret_file: Path | None = Field(
        None, description="A file holding the client's secret (instead of `client_secret`)."
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile"],
        description="Scopes the browser login asks for (Entra: add the API's scope).",
    )
    redirect_url: str = Field(
        "",
        description=(
            "The login's callback URL as registered at the provider; empty: this node's "
            "`/login/oidc/callback` at the address the browser used."
        ),
    )
    provider_name: str = Field(
        "OpenID Connect",
        max_length=64,
        description='The provider\'s name on the login page ("Log in with ...").',
    )

    @field_validator("issuer", "redirect_url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        if value and not secure_url(value):
            raise ValueError(
                f"access.oidc.{info.field_name} must be an https URL (http only to a loopback "
                "address)"
            )
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        """A token's header names its algorithm: ``none`` would accept an unsigned token, an
        HMAC one signed with the provider's public key (which everybody has)."""
        refused = sorted(set(algorithms) - ASYMMETRIC_ALGORITHMS)
        if refused or not algorithms:
            raise ValueError(
                f"access.oidc.algorithms: {', '.join(refused) or 'none given'}; accepted are "
                f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
        return algorithms

    @field_validator("project_map")
    @classmethod
    def _project_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        bad = sorted(p for p in mapping.values() if p != "*" and not re.match(PROJECT_NAME, p))
        if bad:
            raise ValueError(f"access.oidc.project_map names bad projects: {', '.join(bad)}")
        return mapping

    @model_validator(mode="after")
    def _one_secret(self) -> OidcSettings:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("give access.oidc.client_secret or client_secret_file, not both")
        return self

    @property
    def login(self) -> bool:
        """Whether people can log in through the provider (the node-side code flow)."""
        return bool(self.issuer and self.client_id)


class AccessSettings(BaseModel):
    """Authentication, roles and projects (section ``[access]``)."""

    model_config = {"extra": "forbid"}

    methods: list[AuthMethod] = Field(
        default_factory=list,
        description=(
            "How HTTP callers authenticate: `token` (API tokens, `pacsnode tokens`), "
            "`password` (users, `pacsnode users`, a login page and session cookie), `oidc` "
            "(bearer tokens of an OpenID Connect provider). Empty: no authentication, allowed "
            "only while every listener is on a loopback address."
        ),
    )
    roles: dict[str, list[str]] = Field(
        default_factory=lambda: {name: list(p) for name, p in DEFAULT_ROLES.items()},
        description="Role -> the permissions it grants (`*`: all).",
    )
    projects: list[ProjectRule] = Field(
        default_factory=list,
        description=(
            "Rules assigning an arriving study to projects (every matching rule adds its "
            "project); a study no rule matches joins `default_project`."
        ),
    )
    default_project: str = Field(
        "default", pattern=PROJECT_NAME, description="The project of studies no rule matches."
    )
    session_hours: float = Field(
        8.0, gt=0, description="Hours a login session (cookie) lasts without being renewed."
    )
    oidc: OidcSettings = Field(default_factory=lambda: OidcSettings.model_validate({}))

    @field_validator("roles")
    @classmethod
    def _known_permissions(cls, roles: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, permissions in roles.items():
            unknown = sorted(set(permissions) - PERMISSIONS - {"*"})
            if unknown:
                raise ValueError(f"role {role!r} names unknown permissions: {', '.join(unknown)}")
        return roles

    @model_validator(mode="after")
    def _oidc_configured(self) -> AccessSettings:
        if "oidc" in self.methods and not (self.oidc.issuer and self.oidc.audience):
            raise ValueError("access.methods has oidc: set access.oidc.issuer and audience")
        return self

    @property
    def enabled(self) -> bool:
        """Whether callers must authenticate."""
        return bool(self.methods)
