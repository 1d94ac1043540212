"""STOW-RS (PS3.18 10.5): store instances through the one ingest pipeline.

Each part of the multipart/related body goes to :meth:`ingest.Ingestor.accept`, so it is
validated, de-identified and indexed as a C-STORE would be; the outcome maps to a
FailureReason (the table beside C-STORE's in ``scp/status.py``). The whole body is read and
checked before the first instance is stored, so a truncated upload stores nothing; it is
held in memory, never spooled to disk, since it is not yet de-identified.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from dicomweb.context import DicomwebContext, check_uid
from dicomweb.media import DICOM, BadMultipartError, parse_accept, parse_media_type, read_multipart
from ingest import Expected, IngestResult, Outcome, Source


class FailureReason(enum.IntEnum):
    """FailureReason (0008,1197) values of a STOW-RS answer (PS3.18 10.5.3, PS3.4 B.2.3)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    REFUSED_BY_POLICY = 0xC001


STOW_FAILURE_REASON: dict[Outcome, FailureReason | None] = {
    Outcome.STORED: None,
    Outcome.REPLACED: None,
    Outcome.DUPLICATE: None,
    Outcome.REJECTED_INVALID: FailureReason.CANNOT_UNDERSTAND,
    Outcome.REJECTED_MISMATCH: FailureReason.DATA_SET_MISMATCH,
    Outcome.REJECTED_DEID: FailureReason.REFUSED_BY_POLICY,
    Outcome.FAILED_STORAGE: FailureReason.OUT_OF_RESOURCES,
    Outcome.FAILED_INDEX: FailureReason.OUT_OF_RESOURCES,
    Outcome.FAILED_INTERNAL: FailureReason.PROCESSING_FAILURE,
}
"""``None``: stored (the instance is listed in ReferencedSOPSequence)."""

_RETRIEVE_URL = "00081190"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_CLASS = "00081150"
_REFERENCED_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def create_stow_router(context: DicomwebContext) -> APIRouter:
    router = APIRouter(tags=["STOW-RS"])

    async def store(request: Request, study: str | None) -> Response:
        if study is not None:
            check_uid("study", study)
        if not any(
            r.matches("application/dicom+json") or r.matches("application/json")
            for r in parse_accept(request.headers.get("accept"))
        ):
            raise HTTPException(406, "the STOW-RS answer is available as application/dicom+json")
        header = request.headers.get("content-type", "")
        declared = parse_media_type(header)
        if (
            declared.media_type != "multipart/related"
            or declared.params.get("type", DICOM) != DICOM
        ):
            raise HTTPException(415, f'send multipart/related; type="{DICOM}"')
        length = request.headers.get("content-length")
        limit = context.settings.max_stow_bytes
        if length and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"the request is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPException(413, f"the request is larger than {limit} bytes")
        try:
            parts = read_multipart(header, bytes(body))
        except BadMultipartError as exc:
            raise HTTPException(400, str(exc)) from None
        del body
        if not parts:
            raise HTTPException(400, "the request holds no instances")
        client = request.client
        source = Source(door="stow", remote=f"{client.host}:{client.port}" if client else "unknown")
        expected = Expected(study_instance_uid=study) if study else None
        results = await run_in_threadpool(_accept_all, context, parts, source, expected)
        return _answer(context, request, results)

    @router.post("/studies", summary="Store instances")
    async def store_instances(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study}", summary="Store instances of a study")
    async def store_study_instances(study: str, request: Request) -> Response:
        return await store(request, study)

    return router


def _accept_all(
    context: DicomwebContext,
    parts: list[tuple[str, bytes]],
    source: Source,
    expected: Expected | None,
) -> list[IngestResult]:
    results = []
    for part_type, data in parts:
        if part_type and parse_media_type(part_type).media_type != DICOM:
            results.append(
                IngestResult(Outcome.REJECTED_INVALID, source, reason=f"a part is not {DICOM}")
            )
            continue
        results.append(context.ingestor.accept(data, source, expected))
    return results


def _answer(context: DicomwebContext, request: Request, results: list[IngestResult]) -> Response:
    base = context.base_url(request)
    referenced, failed, warnings = [], [], []
    for position, result in enumerate(results, start=1):
        reason = STOW_FAILURE_REASON[result.outcome]
        if reason is None:
            url = (
                f"{base}/studies/{result.study_instance_uid}/series/"
                f"{result.series_instance_uid}/instances/{result.sop_instance_uid}"
            )
            referenced.append(
                {
                    _REFERENCED_SOP_CLASS: _uid(result.sop_class_uid),
                    _REFERENCED_SOP_INSTANCE: _uid(result.sop_instance_uid),
                    _RETRIEVE_URL: {"vr": "UR", "Value": [url]},
                }
            )
        else:
            failed.append(
                {
                    _REFERENCED_SOP_CLASS: _uid(result.sop_class_uid),
                    _REFERENCED_SOP_INSTANCE: _uid(result.sop_instance_uid),
                    _FAILURE_REASON: {"vr": "US", "Value": [int(reason)]},
                }
            )
            warnings.append(f"part {position}: {result.reason}")
    answer: dict[str, Any] = {}
    studies = {r.study_instance_uid for r in results if STOW_FAILURE_REASON[r.outcome] is None}
    if len(studies) == 1:
        answer[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if failed:
        answer[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        answer[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    host = request.url.netloc
    headers = {"Warning": ", ".join(f'299 {host} "{w}"' for w in warnings)} if warnings else {}
    return context.json_response(request, json.dumps(answer), status_code=status, headers=headers)
