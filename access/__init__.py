"""Access control: who a caller is (principals and their credentials), what they may do
(permissions of roles) and which studies exist for them (projects).

A core room: the doors (HTTP in ``api/``, DIMSE in ``scp/``) ask it; it never imports a door.
"""

from access.principal import ALL, Method, Principal, permissions_of, unauthenticated
from access.projects import ProjectRules
from config.permissions import PERMISSIONS, Permission

__all__ = [
    "ALL",
    "PERMISSIONS",
    "Method",
    "Permission",
    "Principal",
    "ProjectRules",
    "permissions_of",
    "unauthenticated",
]
