"""STOW-RS (PS3.18 10.5): store instances through the one ingest pipeline.

The body is one instance (``Content-Type: application/dicom``) or a multipart/related body of
instances. As it arrives it is parsed and its parts' bytes go to an encrypted spool file
(:mod:`ingest.spool`: the bytes are not de-identified yet), so memory holds a chunk of the
body, never all of it. Only a complete body is stored: a truncated upload stores nothing.
Then each part, read back from the spool one at a time (a large one is left there:
:mod:`ingest.spooled`), goes to :meth:`ingest.Ingestor.accept`, so it is validated,
de-identified and indexed as a C-STORE would be; the outcome maps to a FailureReason (the
table beside C-STORE's in ``scp/status.py``). Failures are listed one by one in the
answer's FailedSOPSequence and summarised (count per reason, the first parts) in its
``Warning`` header and in one log line.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from access import Permission
from api.security import require
from dicomweb.context import DicomwebContext, caller_name, caller_projects, check_uid
from dicomweb.media import (
    DICOM,
    BadMultipartError,
    BodyReader,
    Part,
    UnsupportedBodyError,
    body_reader,
    parse_accept,
    parse_media_type,
)
from ingest import Expected, IngestResult, Outcome, Source
from ingest.spool import EncryptedSpool
from ingest.spooled import Spooled

log = logging.getLogger(__name__)


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

_SPOOL_BATCH = 1 << 20
"""Bytes of the body gathered before they are parsed and spooled (in a worker thread)."""
_SUMMARY_REASONS = 5
"""Reasons named in the Warning header and the log line of a request; more are counted."""
_SUMMARY_PARTS = 3
"""Part numbers named per reason."""
_REASON_LENGTH = 200


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def create_stow_router(context: DicomwebContext) -> APIRouter:
    router = APIRouter(tags=["STOW-RS"], dependencies=[Depends(require(Permission.DICOMWEB_WRITE))])

    async def store(request: Request, study: str | None) -> Response:
        if study is not None:
            check_uid("study", study)
        if not any(
            r.matches("application/dicom+json") or r.matches("application/json")
            for r in parse_accept(request.headers.get("accept"))
        ):
            raise HTTPException(406, "the STOW-RS answer is available as application/dicom+json")
        limit = context.settings.max_stow_bytes
        declared = request.headers.get("content-length", "").lstrip("0")
        if (declared.isascii() and declared.isdigit()) and (
            len(declared) > len(str(limit)) or int(declared) > limit  # no int() of 5,000 digits
        ):
            raise HTTPException(413, f"the request is larger than {limit} bytes")
        client = request.client
        projects = caller_projects(request)
        source = Source(
            door="stow",
            remote=f"{client.host}:{client.port}" if client else "unknown",
            projects=tuple(sorted(projects)) if projects else (),
            actor=caller_name(request),
        )
        expected = Expected(study_instance_uid=study) if study else None
        try:
            with EncryptedSpool(context.spool_dir) as spool:
                reader = body_reader(request.headers.get("content-type", ""), spool.write)
                parts = await _receive(context, request, reader)
                results = await run_in_threadpool(
                    _accept_all, context, spool, parts, source, expected
                )
        except UnsupportedBodyError as exc:
            raise HTTPException(415, str(exc)) from None
        except BadMultipartError as exc:
            raise HTTPException(400, str(exc)) from None
        except OSError as exc:
            log.error("STOW-RS from %s: cannot spool the request: %s", source.remote, exc.strerror)
            raise HTTPException(507, f"cannot hold the request ({exc.strerror})") from None
        except ClientDisconnect:
            log.info("STOW-RS from %s: the client left before the end of its body", source.remote)
            raise HTTPException(400, "the body ended early; nothing was stored") from None
        return _answer(context, request, results, source)

    @router.post("/studies", summary="Store instances")
    async def store_instances(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study}", summary="Store instances of a study")
    async def store_study_instances(study: str, request: Request) -> Response:
        return await store(request, study)

    return router


async def _receive(context: DicomwebContext, request: Request, reader: BodyReader) -> list[Part]:
    """Read the whole body into ``reader`` (parsing and spooling happen in a worker thread)."""
    limit = context.settings.max_stow_bytes
    most = context.settings.max_stow_instances
    received = 0
    batch: list[bytes] = []
    batched = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, f"the request is larger than {limit} bytes")
        batch.append(chunk)
        batched += len(chunk)
        if batched >= _SPOOL_BATCH:
            await run_in_threadpool(reader.write, b"".join(batch))
            batch.clear()
            batched = 0
            if len(reader.parts) > most:
                raise HTTPException(413, f"the request holds more than {most} instances")
    if batch:
        await run_in_threadpool(reader.write, b"".join(batch))
    if not received:
        raise HTTPException(400, "the request body is empty; send one or more DICOM instances")
    parts = reader.finish()
    if len(parts) > most:
        raise HTTPException(413, f"the request holds more than {most} instances")
    if not parts:
        raise HTTPException(400, "the request holds no instances")
    return parts


def _accept_all(
    context: DicomwebContext,
    spool: EncryptedSpool,
    parts: list[Part],
    source: Source,
    expected: Expected | None,
) -> list[IngestResult]:
    """Each part through the pipeline, one in memory at a time; the door logs a summary."""
    results = []
    for part in parts:
        if part.content_type and parse_media_type(part.content_type).media_type != DICOM:
            results.append(
                IngestResult(Outcome.REJECTED_INVALID, source, reason=f"a part is not {DICOM}")
            )
            continue
        if part.length > context.spool_threshold:  # a large one stays in the spool
            spooled = Spooled(spool, part.offset, part.length)
            results.append(
                context.ingestor.accept_received(spooled, source, expected, log_failure=False)
            )
            continue
        try:
            data = spool.read(part.offset, part.length)
        except OSError as exc:
            reason = f"cannot read the part back from the spool ({exc.strerror})"
            results.append(IngestResult(Outcome.FAILED_STORAGE, source, reason=reason))
            continue
        results.append(context.ingestor.accept(data, source, expected, log_failure=False))
        del data
    return results


def summarize(failures: Sequence[tuple[int, str]]) -> list[str]:
    """One line per failure reason, most frequent first: how many parts, the first few.

    ``failures`` are ``(part number, reason)``; reasons after the first few are counted in
    one last line.
    """
    by_reason: dict[str, list[int]] = {}
    for position, reason in failures:
        by_reason.setdefault(reason, []).append(position)
    ranked = sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[1][0]))
    lines = []
    for reason, positions in ranked[:_SUMMARY_REASONS]:
        if len(positions) == 1:
            lines.append(f"part {positions[0]}: {reason}")
            continue
        shown = ", ".join(str(p) for p in positions[:_SUMMARY_PARTS])
        more = len(positions) - _SUMMARY_PARTS
        if more > 0:
            shown += f" and {more} more"
        lines.append(f"{len(positions)} parts ({shown}): {reason}")
    if len(ranked) > _SUMMARY_REASONS:
        rest = ranked[_SUMMARY_REASONS:]
        lines.append(
            f"{sum(len(p) for _, p in rest)} parts for {len(rest)} other reasons "
            "(FailedSOPSequence lists every part)"
        )
    return lines


def _header_text(reason: str | None) -> str:
    """A reason fit for a quoted string of a header: printable ASCII, bounded, escaped."""
    text = "".join(c if " " <= c <= "~" else "?" for c in (reason or "refused"))
    if len(text) > _REASON_LENGTH:
        text = text[: _REASON_LENGTH - 3] + "..."
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _answer(
    context: DicomwebContext, request: Request, results: list[IngestResult], source: Source
) -> Response:
    base = context.base_url(request)
    referenced, failed, failures = [], [], []
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
            failures.append((position, _header_text(result.reason)))
    answer: dict[str, Any] = {}
    studies = {r.study_instance_uid for r in results if STOW_FAILURE_REASON[r.outcome] is None}
    if len(studies) == 1:
        answer[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if failed:
        answer[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        answer[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    headers = {}
    if failures:
        summary = summarize(failures)
        host = request.url.netloc
        headers["Warning"] = ", ".join(f'299 {host} "{line}"' for line in summary)
        log.warning(
            "STOW-RS from %s: %d of %d instances refused: %s",
            source.remote,
            len(failures),
            len(results),
            "; ".join(summary),
        )
    else:
        log.info("STOW-RS from %s: %d instances stored", source.remote, len(results))
    return context.json_response(request, json.dumps(answer), status_code=status, headers=headers)
