"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

The routes translate QIDO's query parameters into :func:`catalog.query.parse_query` and its
rows into DICOM JSON with RetrieveURLs; all matching lives in :mod:`catalog.query`. No match
is ``200`` with ``[]`` (CP-2473; PS3.18 before it said ``204``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from access import Permission
from api.audited import note_audit
from api.security import require
from audit import Action
from catalog.locate import study_exists
from catalog.query import QueryError, QueryLevel, parse_query, run_query, study_uids
from dicomweb.context import DicomwebContext, caller_projects, check_uid
from dicomweb.media import parse_accept

QIDO_PARAMETERS = ("includefield", "limit", "offset", "fuzzymatching")
"""Query parameters that are not attribute keys (PS3.18 8.3.4)."""

MAX_PAGING = 2**31 - 1
"""Largest ``limit`` and ``offset`` (a catalog holds fewer rows; SQL takes it)."""

_JSON_TYPES = ("application/dicom+json", "application/json")
_RETRIEVE_URL = "00081190"


def _check_accept(request: Request) -> str:
    for wanted in parse_accept(request.headers.get("accept")):
        for media_type in _JSON_TYPES:
            if wanted.matches(media_type):
                return media_type
    raise HTTPException(406, "search results are available as application/dicom+json only")


def _paging_number(name: str, value: str, lowest: int) -> int:
    """``limit`` or ``offset``: ASCII digits only (``int()`` also takes ``²``-like digits
    of other scripts and ``_``), from ``lowest`` to :data:`MAX_PAGING`."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_PAGING)):
        raise QueryError(name, f"must be an integer from {lowest} to {MAX_PAGING}")
    number = int(value)
    if not lowest <= number <= MAX_PAGING:
        raise QueryError(name, f"must be an integer from {lowest} to {MAX_PAGING}")
    return number


def _parse(
    request: Request,
    level: QueryLevel,
    path_keys: dict[str, str],
    parents: tuple[QueryLevel, ...],
    max_results: int,
) -> tuple[Any, list[str]]:
    keys: dict[str, list[str]] = {}
    include: list[str] = []
    include_all = False
    fuzzy = False
    limit = max_results
    offset = 0
    warnings: list[str] = []
    for name, value in request.query_params.multi_items():
        lowered = name.lower()
        if lowered == "includefield":
            fields = [f.strip() for f in value.split(",") if f.strip()]
            include_all = include_all or "all" in fields
            include.extend(f for f in fields if f != "all")
        elif lowered == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError("fuzzymatching", "must be true or false")
            fuzzy = value.lower() == "true"
        elif lowered == "offset":
            offset = _paging_number("offset", value, 0)
        elif lowered == "limit":
            wanted = _paging_number("limit", value, 1)
            if wanted > max_results:
                warnings.append(
                    f"The limit {wanted} exceeds the maximum of {max_results} results "
                    "per answer; the answer is limited to it"
                )
            else:
                limit = wanted
        else:
            keys.setdefault(name, []).append(value)
    for name, value in path_keys.items():
        keys[name] = [value]
    query = parse_query(
        level,
        keys,
        include=include,
        include_all=include_all,
        parents=parents,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
    )
    if query.unsupported:
        warnings.append(
            "The following attributes are not supported as matching keys and were ignored: "
            + ", ".join(query.unsupported)
        )
    return query, warnings


_NOT_KEYS = frozenset({"includefield", "fuzzymatching", "offset", "limit"})


def create_qido_router(context: DicomwebContext) -> APIRouter:
    router = APIRouter(tags=["QIDO-RS"], dependencies=[Depends(require(Permission.DICOMWEB_READ))])

    def search(
        request: Request,
        level: QueryLevel,
        path_keys: dict[str, str],
        parents: tuple[QueryLevel, ...] = (),
    ) -> Response:
        media_type = _check_accept(request)
        for name, uid in path_keys.items():
            check_uid(name, uid)
        try:
            query, warnings = _parse(
                request, level, path_keys, parents, context.settings.max_results
            )
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        projects = caller_projects(request)
        query = replace(query, projects=projects)
        study = path_keys.get("StudyInstanceUID")
        if study is not None and not study_exists(
            context.db, study, path_keys.get("SeriesInstanceUID"), projects=projects
        ):
            raise HTTPException(404, "no such study or series")
        result = run_query(context.db, query)
        if result.more_available:
            warnings.append("There are additional results that can be requested")
        host = request.url.netloc
        headers = {"Warning": ", ".join(f'299 {host} "{w}"' for w in warnings)} if warnings else {}
        base = context.base_url(request)
        for row in result.rows:
            row[_RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(base, level, row)]}
        body = json.dumps([dict(sorted(row.items())) for row in result.rows], ensure_ascii=False)
        note_audit(
            request,
            Action.QUERY,
            studies=study_uids(result.rows),
            detail={
                "level": level.name,
                # the keys matched on, never their values (a name the caller typed)
                "keys": sorted(
                    {n for n in request.query_params if n.lower() not in _NOT_KEYS} | set(path_keys)
                ),
                "matches": len(result.rows),
            },
        )
        return context.json_response(request, body, headers=headers, media_type=media_type)

    async def run(
        request: Request,
        level: QueryLevel,
        path_keys: dict[str, str],
        parents: tuple[QueryLevel, ...] = (),
    ) -> Response:
        return await run_in_threadpool(search, request, level, path_keys, parents)

    @router.get("/studies", summary="Search for studies")
    async def search_studies(request: Request) -> Response:
        return await run(request, QueryLevel.STUDY, {})

    @router.get("/series", summary="Search for series")
    async def search_series(request: Request) -> Response:
        return await run(request, QueryLevel.SERIES, {}, (QueryLevel.STUDY,))

    @router.get("/instances", summary="Search for instances")
    async def search_instances(request: Request) -> Response:
        return await run(request, QueryLevel.IMAGE, {}, (QueryLevel.STUDY, QueryLevel.SERIES))

    @router.get("/studies/{study}/series", summary="Search for series of a study")
    async def search_study_series(study: str, request: Request) -> Response:
        return await run(request, QueryLevel.SERIES, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/instances", summary="Search for instances of a study")
    async def search_study_instances(study: str, request: Request) -> Response:
        keys = {"StudyInstanceUID": study}
        return await run(request, QueryLevel.IMAGE, keys, (QueryLevel.SERIES,))

    @router.get(
        "/studies/{study}/series/{series}/instances", summary="Search for instances of a series"
    )
    async def search_series_instances(study: str, series: str, request: Request) -> Response:
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        return await run(request, QueryLevel.IMAGE, keys)

    return router


def _retrieve_url(base: str, level: QueryLevel, row: dict[str, Any]) -> str:
    def uid(tag: str) -> str:
        return str(row[tag]["Value"][0])

    url = f"{base}/studies/{uid('0020000D')}"
    if level >= QueryLevel.SERIES:
        url += f"/series/{uid('0020000E')}"
    if level is QueryLevel.IMAGE:
        url += f"/instances/{uid('00080018')}"
    return url
