"""Admin-only HTTP re-identification: the one HTTP answer that may carry originals.

``GET /api/admin/reidentify/{kind}/{pseudonym}?reason=...`` needs the ``admin.reidentify``
permission (the ``admin`` role; never the unauthenticated caller of a node without
authentication) and a stated reason. Every call is written to the audit trail with the
caller, the pseudonym and the reason. When HTTPS is configured (``[https]``), a request that
did not come over HTTPS is refused (403) before the vault is read: the originals never cross
the network in clear.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from access import Permission, Principal
from api.security import require
from catalog.projects import pseudonym_in_projects
from deid import Accessor, Vault

Kind = Literal["patient", "study", "series", "accession"]


def reidentify_router(vault: Vault, *, https_only: bool = False) -> APIRouter:
    """Routes that read the vault (mounted under ``/api/admin``); ``https_only``: refuse
    requests that did not come over HTTPS (its scheme, set by a trusted proxy's
    ``X-Forwarded-Proto`` behind one)."""
    router = APIRouter(tags=["admin"])

    @router.get("/reidentify/{kind}/{pseudonym}")
    def reidentify(
        kind: Kind,
        pseudonym: str,
        request: Request,
        response: Response,
        principal: Annotated[Principal, Depends(require(Permission.REIDENTIFY))],
        reason: Annotated[str, Query(min_length=3, max_length=512, description="Why (audited).")],
    ) -> dict[str, object]:
        """The originals behind a pseudonym (audited); 404 when the vault has none, 403 over
        plain HTTP when the node has HTTPS."""
        if https_only and request.url.scheme != "https":
            raise HTTPException(
                status_code=403,
                detail="re-identification is answered over HTTPS only: this request came "
                "over plain HTTP (send it to the node's https:// address)",
            )
        response.headers["Cache-Control"] = "no-store"
        if principal.projects is not None and not pseudonym_in_projects(
            vault.db, kind, pseudonym, principal.projects
        ):
            raise HTTPException(status_code=404, detail=f"no {kind} with this pseudonym")
        accessor = Accessor(principal.name, reason, "http", principal.remote)
        originals = vault.reidentify(kind, pseudonym, actor=accessor)
        if originals is None:
            raise HTTPException(status_code=404, detail=f"no {kind} with this pseudonym")
        return {"kind": kind, "pseudonym": pseudonym, "originals": originals}

    return router
