"""HTTP API of cohorts and exports (``/api/cohorts``), used by researchers and the dashboard.

A plain ``APIRouter`` over :mod:`export`; the composition root mounts it with the node's
dependencies. The export is a zip streamed while it is written: nothing of it is held in
memory or in a temporary file.

Projects: a cohort a caller defines is over their projects, and its selection never holds a
study outside them; a cohort over a project the caller does not see is ``404`` on every route
(``docs/export.md``, "Projects").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from access import Permission, Principal
from api.security import caller_projects, require
from export import (
    AlreadyFrozenError,
    CohortNameTakenError,
    CohortNotFoundError,
    Cohorts,
    EmptyCohortError,
    Exporter,
    ExportError,
    FrozenDataChangedError,
    InvalidDefinitionError,
    NotFrozenError,
)
from export.choices import form_choices

_STATUS: tuple[tuple[type[ExportError], int], ...] = (
    (CohortNotFoundError, status.HTTP_404_NOT_FOUND),
    (CohortNameTakenError, status.HTTP_409_CONFLICT),
    (InvalidDefinitionError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (EmptyCohortError, status.HTTP_409_CONFLICT),
    (NotFrozenError, status.HTTP_409_CONFLICT),
    (AlreadyFrozenError, status.HTTP_409_CONFLICT),
    (FrozenDataChangedError, status.HTTP_409_CONFLICT),
)


class NewCohort(BaseModel):
    """The body of ``POST /api/cohorts``; an unknown key (a misspelled ``definition``) is
    refused with 422 naming it, never ignored (an empty definition matches everything)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Cohort name; defining an existing name adds a version.")
    description: str = Field(default="", max_length=4000)
    definition: dict[str, Any] = Field(
        default_factory=dict, description="Filters, balance, split and seed (see the docs)."
    )


def _http_error(exc: ExportError) -> HTTPException:
    code = next((c for kind, c in _STATUS if isinstance(exc, kind)), status.HTTP_400_BAD_REQUEST)
    return HTTPException(status_code=code, detail=str(exc))


def _actor(request: Request) -> str:
    """Who, for the audit trail: the caller's name, and the address they came from."""
    client = request.client
    where = f"http:{client.host}" if client else "http"
    principal = getattr(request.state, "principal", None)
    if principal is None or principal.method == "none":
        return where
    return f"{principal.name} ({where})"


def cohort_router(cohorts: Cohorts, exporter: Exporter) -> APIRouter:
    """The ``/cohorts`` routes over one :class:`Cohorts` and :class:`Exporter`."""
    router = APIRouter(prefix="/cohorts", tags=["cohorts"])

    @router.get("", dependencies=[Depends(require(Permission.COHORTS_READ))])
    def list_cohorts(request: Request) -> list[dict[str, Any]]:
        """Every version of every cohort the caller sees."""
        return [info.as_json() for info in cohorts.all_versions(caller_projects(request))]

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        dependencies=[Depends(require(Permission.COHORTS_WRITE))],
    )
    def define_cohort(request: Request, new: NewCohort) -> dict[str, Any]:
        """Save a definition as the next version of ``name``."""
        try:
            info = cohorts.define(
                new.name,
                new.definition,
                description=new.description,
                actor=_actor(request),
                projects=caller_projects(request),
            )
        except ExportError as exc:
            raise _http_error(exc) from None
        return info.as_json()

    @router.post("/preview", dependencies=[Depends(require(Permission.COHORTS_READ))])
    def preview_definition(
        request: Request,
        definition: Annotated[dict[str, Any], Body(description="A cohort definition.")],
    ) -> dict[str, Any]:
        """What an unsaved definition would hold now among the caller's studies: counts
        only."""
        try:
            return cohorts.preview(definition, caller_projects(request))
        except ExportError as exc:
            raise _http_error(exc) from None

    @router.get("/_form", dependencies=[Depends(require(Permission.COHORTS_READ))])
    def cohort_form(request: Request) -> dict[str, Any]:
        """What a cohort form offers the caller: label tasks and their classes, sequence
        families, the modalities and body parts of their series (with counts), the default
        split and seed, and whether they may save and freeze (``write``) and download
        (``export``). ``_form`` is no cohort's name (a name starts with a letter)."""
        principal: Principal | None = getattr(request.state, "principal", None)
        return {
            **form_choices(cohorts, caller_projects(request)),
            "can": {
                "write": principal is not None and principal.allows(Permission.COHORTS_WRITE),
                "export": principal is not None and principal.allows(Permission.EXPORT),
            },
        }

    @router.get("/{ref}", dependencies=[Depends(require(Permission.COHORTS_READ))])
    def get_cohort(request: Request, ref: str) -> dict[str, Any]:
        """One cohort version (``name``, ``name@version`` or id)."""
        try:
            return cohorts.get(ref, caller_projects(request)).as_json()
        except ExportError as exc:
            raise _http_error(exc) from None

    @router.get("/{ref}/preview", dependencies=[Depends(require(Permission.COHORTS_READ))])
    def preview_cohort(request: Request, ref: str) -> dict[str, Any]:
        """Counts per class, modality, sequence, sex, age bin and split; nothing copied."""
        try:
            return cohorts.preview(ref, caller_projects(request))
        except ExportError as exc:
            raise _http_error(exc) from None

    @router.post("/{ref}/freeze", dependencies=[Depends(require(Permission.COHORTS_WRITE))])
    def freeze_cohort(request: Request, ref: str) -> dict[str, Any]:
        """Pin the cohort's instances and record its manifest hash."""
        try:
            return cohorts.freeze(
                ref, actor=_actor(request), projects=caller_projects(request)
            ).as_json()
        except ExportError as exc:
            raise _http_error(exc) from None

    @router.get("/{ref}/export", dependencies=[Depends(require(Permission.EXPORT))])
    def export_cohort(
        request: Request,
        ref: str,
        format_name: Annotated[Literal["dicom", "nifti", "png"], Query(alias="format")] = "dicom",
    ) -> StreamingResponse:
        """The frozen cohort as a zip (files, manifests, dataset.json), streamed."""
        try:
            download = exporter.to_zip(
                ref, format_name, actor=_actor(request), projects=caller_projects(request)
            )
        except ExportError as exc:
            raise _http_error(exc) from None
        return StreamingResponse(
            download.chunks,
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{download.filename}"',
                "X-Manifest-SHA256": download.cohort.info.manifest_sha256 or "",
            },
        )

    return router
