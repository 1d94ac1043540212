"""Who is calling, and what they may do and see."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from config.permissions import PERMISSIONS

Method = Literal["none", "token", "password", "oidc", "session", "dicom"]

ALL = "*"
"""The permission that stands for every permission (the ``admin`` role's)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``projects`` is ``None`` for a caller who sees every project (an administrator, or any
    caller while authentication is off); otherwise only studies of those projects exist for
    them, through every door.
    """

    name: str
    permissions: frozenset[str]
    projects: frozenset[str] | None
    method: Method
    remote: str = ""

    def allows(self, permission: str) -> bool:
        return ALL in self.permissions or permission in self.permissions

    def sees(self, projects: Iterable[str]) -> bool:
        """Whether a study of ``projects`` exists for this caller."""
        return self.projects is None or not self.projects.isdisjoint(projects)

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "permissions": sorted(self.permissions),
                "projects": None if self.projects is None else sorted(self.projects),
                "method": self.method,
            }
        )

    @classmethod
    def from_json(cls, text: str, *, method: Method, remote: str = "") -> Principal:
        data = json.loads(text)
        projects = data["projects"]
        return cls(
            name=data["name"],
            permissions=frozenset(data["permissions"]),
            projects=None if projects is None else frozenset(projects),
            method=method,
            remote=remote,
        )


def unauthenticated(remote: str = "") -> Principal:
    """The caller of a node without authentication (loopback only): may do everything but
    re-identify (that needs an authenticated administrator, or the CLI)."""
    return Principal("anonymous", _UNAUTHENTICATED, None, "none", remote)


_UNAUTHENTICATED = PERMISSIONS - {"admin.reidentify"}


def permissions_of(roles: Iterable[str], role_table: Mapping[str, list[str]]) -> frozenset[str]:
    """The permissions the ``roles`` grant (unknown roles grant nothing)."""
    granted: set[str] = set()
    for role in roles:
        granted.update(role_table.get(role, ()))
    if ALL in granted:
        return frozenset({ALL})
    return frozenset(granted & PERMISSIONS)
