"""Admin-only HTTP re-identification: the one HTTP answer that may carry originals.

``GET /api/admin/reidentify/{kind}/{pseudonym}`` with ``Authorization: Bearer <token>``
(the token is ``<secrets>/admin.token``). Every call, allowed or not, is written to the
audit trail with the pseudonym asked for. Until the security work adds roles, holding the
token is what makes a caller an administrator.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Request, Response
from pydantic import SecretStr

from deid import Vault

Kind = Literal["patient", "study", "series", "accession"]


def _caller(request: Request) -> str:
    client = request.client
    return f"http {client.host}:{client.port}" if client else "http"


def admin_guard(token: SecretStr, vault: Vault) -> Callable[..., None]:
    """A dependency that lets only holders of the admin token through (401 otherwise)."""
    expected = token.get_secret_value().encode()

    def require_admin(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected):
            vault.audit(_caller(request), "admin_api", request.url.path[:128], "denied")
            raise HTTPException(
                status_code=401,
                detail="the admin bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_admin


def reidentify_router(vault: Vault) -> APIRouter:
    """Routes that read the vault; mount them behind :func:`admin_guard`."""
    router = APIRouter(tags=["admin"])

    @router.get("/reidentify/{kind}/{pseudonym}")
    def reidentify(
        kind: Kind, pseudonym: str, request: Request, response: Response
    ) -> dict[str, object]:
        """The originals behind a pseudonym (audited); 404 when the vault has none."""
        response.headers["Cache-Control"] = "no-store"
        originals = vault.reidentify(kind, pseudonym, actor=f"{_caller(request)} admin token")
        if originals is None:
            raise HTTPException(status_code=404, detail=f"no {kind} with this pseudonym")
        return {"kind": kind, "pseudonym": pseudonym, "originals": originals}

    return router
