"""Settings of access control: how callers authenticate, what each role may do, and which
projects an arriving study joins (section ``[access]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

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
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256"],
        description="Signature algorithms accepted (never `none` or an HMAC).",
    )


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
