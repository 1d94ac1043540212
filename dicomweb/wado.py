"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images, thumbnails.

Instances stream from the blob store part by part (a study is never held in memory); a
transcoded instance is held only while it is sent. Metadata comes from the DICOM JSON stored
at ingest, in one catalog read.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from access import Permission
from api.security import require
from catalog import BULKDATA_URI_PREFIX
from catalog.locate import StoredInstance, locate, stored_metadata
from dicomweb.context import DicomwebContext, audited_retrieve, caller_projects, check_uid
from dicomweb.media import (
    DICOM,
    DICOM_JSON,
    OCTET_STREAM,
    PART_TRAILER,
    MultipartWriter,
    NotAcceptableError,
    Representation,
    content_type,
    negotiate,
    parse_accept,
)
from dicomweb.pixels import (
    FRAME_MEDIA_TYPES,
    WINDOW_FUNCTIONS,
    CannotTranscodeError,
    FrameNotFoundError,
    PixelDataError,
    RenderOptions,
    bulkdata,
    can_transcode,
    frames,
    render,
    transcode,
)
from storage import BlobStore

log = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
"""The default transfer syntax of application/dicom and of uncompressed frames (PS3.18 8.7.3)."""

BATCH = 4 << 20
FRAME_BATCH = 1 << 20
RENDERED_TYPES = ("image/jpeg", "image/png")
NUMBER = re.compile(r"[0-9]{1,10}")
"""A whole number in a path or query: ASCII digits only (``int`` also takes ``١``, ``+1``,
``1_0`` and raises on 5,000 digits), at most 10 of them."""


def _as_stored(instance: StoredInstance, syntax: str) -> bool:
    return syntax in ("*", instance.transfer_syntax_uid)


def _stored_batches(
    blobs: BlobStore, parts: list[tuple[StoredInstance, bytes]], end: bytes
) -> Iterator[memoryview]:
    """The multipart body of stored files, in batches of about BATCH bytes.

    Each batch is allocated at its final size and every file is read into it in place, so
    file bytes are copied once on their way to the socket. A file larger than a batch (a
    large multi-frame instance) goes in chunks of its own instead.
    """
    start = 0
    while start < len(parts):
        if parts[start][0].size > BATCH:
            yield from _large_part(blobs, *parts[start], end if start == len(parts) - 1 else b"")
            start += 1
            continue
        stop = start + 1
        total = len(parts[start][1]) + parts[start][0].size
        while stop < len(parts) and total < BATCH and parts[stop][0].size <= BATCH:
            total += len(parts[stop][1]) + parts[stop][0].size
            stop += 1
        group = parts[start:stop]
        batch = bytearray(
            sum(len(header) + i.size + len(PART_TRAILER) for i, header in group)
            + (len(end) if stop == len(parts) else 0)
        )
        view = memoryview(batch)
        offset = 0
        for instance, header in group:
            for piece in (header, None, PART_TRAILER):
                if piece is None:
                    with blobs.open(instance.blob_key) as stream:
                        read = _read_into(stream, view[offset : offset + instance.size])
                    if read != instance.size:
                        raise BlobSizeError(instance.sop_instance_uid)
                    offset += read
                else:
                    view[offset : offset + len(piece)] = piece
                    offset += len(piece)
        if stop == len(parts):
            view[offset:] = end
        yield view
        start = stop


def _large_part(
    blobs: BlobStore, instance: StoredInstance, header: bytes, end: bytes
) -> Iterator[memoryview]:
    """One part of :func:`_stored_batches` whose file is read a chunk at a time."""
    yield memoryview(header)
    sent = 0
    with blobs.open(instance.blob_key) as stream:
        while chunk := stream.read(min(BATCH, instance.size - sent)):
            sent += len(chunk)
            yield memoryview(chunk)
    if sent != instance.size:
        raise BlobSizeError(instance.sop_instance_uid)
    yield memoryview(PART_TRAILER + end)


def _read_into(stream: BinaryIO, target: memoryview) -> int:
    """Fill ``target`` from ``stream`` (in place when the stream can), the bytes read."""
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        return int(readinto(target))
    data = stream.read(len(target))
    target[: len(data)] = data
    return len(data)


class BlobSizeError(RuntimeError):
    """A stored file is shorter than the catalog says (``pacsnode verify`` reports it)."""


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def _read(blobs_open: BinaryIO) -> bytes:
    with blobs_open as stream:
        return stream.read()


def create_wado_router(context: DicomwebContext) -> APIRouter:
    router = APIRouter(
        tags=["WADO-RS"],
        dependencies=[
            Depends(require(Permission.DICOMWEB_READ)),
            Depends(audited_retrieve("WADO-RS")),
        ],
    )
    blobs = context.blobs

    def instances(
        request: Request, study: str, series: str | None = None, sop: str | None = None
    ) -> list[StoredInstance]:
        check_uid("study", study)
        if series is not None:
            check_uid("series", series)
        if sop is not None:
            check_uid("instance", sop)
        found = locate(context.db, study, series, sop, projects=caller_projects(request))
        if not found:
            raise _not_found("instance" if sop else "series" if series else "study")
        return found

    def choose(request: Request, found: list[StoredInstance], single_part: bool) -> Representation:
        try:
            options = negotiate(
                request.headers.get("accept"),
                [DICOM],
                EXPLICIT_VR_LITTLE_ENDIAN,
                single_part=single_part,
            )
        except NotAcceptableError as exc:
            raise HTTPException(406, str(exc)) from None
        for option in options:
            if all(
                can_transcode(i.transfer_syntax_uid, option.transfer_syntax, i.rows is not None)
                for i in found
            ):
                return option
        raise HTTPException(
            406, "the instances cannot be converted to the transfer syntax asked for"
        )

    def instance_chunks(instance: StoredInstance, syntax: str) -> Iterator[bytes]:
        if syntax in ("*", instance.transfer_syntax_uid):
            with blobs.open(instance.blob_key) as stream:
                while chunk := stream.read(BATCH):
                    yield chunk
        else:
            try:
                yield transcode(_read(blobs.open(instance.blob_key)), syntax)
            except Exception:
                log.exception("cannot transcode %s to %s", instance.sop_instance_uid, syntax)
                raise

    def transcoded(instance: StoredInstance, syntax: str) -> bytes:
        try:
            return transcode(_read(blobs.open(instance.blob_key)), syntax)
        except CannotTranscodeError:
            raise HTTPException(
                406, "the instance cannot be converted to the transfer syntax asked for"
            ) from None
        except PixelDataError as exc:
            raise undecodable(exc) from None

    def retrieve(request: Request, found: list[StoredInstance], single_part: bool) -> Response:
        chosen = choose(request, found, single_part)

        def syntax_of(instance: StoredInstance) -> str:
            if chosen.transfer_syntax == "*":
                return instance.transfer_syntax_uid
            return chosen.transfer_syntax

        if len(found) == 1 and not _as_stored(found[0], chosen.transfer_syntax):
            # One instance to convert: convert it before answering, so a failure is a status.
            (instance,) = found
            data = transcoded(instance, chosen.transfer_syntax)
            part_type = content_type(DICOM, syntax_of(instance))
            if not chosen.multipart:
                return Response(
                    data, media_type=part_type, headers={"ETag": f'"{instance.sha256}"'}
                )
            single = MultipartWriter(DICOM)
            answer = b"".join(single.part(part_type, [data])) + single.end()
            return Response(answer, media_type=single.content_type)
        if not chosen.multipart:
            (instance,) = found
            return StreamingResponse(
                instance_chunks(instance, chosen.transfer_syntax),
                media_type=content_type(DICOM, syntax_of(instance)),
                headers={"ETag": f'"{instance.sha256}"'},
            )
        writer = MultipartWriter(DICOM)
        parts = [
            (instance, writer.part_header(content_type(DICOM, syntax_of(instance))))
            for instance in found
        ]
        if all(_as_stored(instance, chosen.transfer_syntax) for instance in found):
            # Sizes are known: send a Content-Length (no chunked framing to copy into) and
            # read each file once, straight into the batch that goes to the socket.
            length = sum(len(header) + i.size + len(PART_TRAILER) for i, header in parts)
            return StreamingResponse(
                _stored_batches(blobs, parts, writer.end()),
                media_type=writer.content_type,
                headers={"Content-Length": str(length + len(writer.end()))},
            )

        def body() -> Iterator[bytes]:
            # Parts are sent in batches of about BATCH bytes: each yield costs a thread hop and
            # a socket write in Starlette, and a batch bounds what is held in memory.
            batch: list[bytes] = []
            size = 0
            for instance, header in parts:
                batch.append(header)
                for piece in instance_chunks(instance, chosen.transfer_syntax):
                    batch.append(piece)
                    size += len(piece)
                batch.append(PART_TRAILER)
                if size >= BATCH:
                    yield b"".join(batch)
                    batch, size = [], 0
            batch.append(writer.end())
            yield b"".join(batch)

        return StreamingResponse(body(), media_type=writer.content_type)

    @router.get("/studies/{study}", summary="Retrieve a study")
    def retrieve_study(study: str, request: Request) -> Response:
        return retrieve(request, instances(request, study), False)

    @router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
    def retrieve_series(study: str, series: str, request: Request) -> Response:
        return retrieve(request, instances(request, study, series), False)

    @router.get("/studies/{study}/series/{series}/instances/{sop}", summary="Retrieve an instance")
    def retrieve_instance(study: str, series: str, sop: str, request: Request) -> Response:
        found = instances(request, study, series, sop)
        if _not_modified(request, found[0].sha256):
            return Response(status_code=304)
        return retrieve(request, found, True)

    # ---------------------------------------------------------------------------- metadata

    async def metadata(
        request: Request, study: str, series: str | None, sop: str | None
    ) -> Response:
        for wanted in parse_accept(request.headers.get("accept")):
            if wanted.matches(DICOM_JSON) or wanted.matches("application/json"):
                break
        else:
            raise HTTPException(406, "metadata is available as application/dicom+json only")
        check_uid("study", study)
        for name, uid in (("series", series), ("instance", sop)):
            if uid is not None:
                check_uid(name, uid)
        stored = await run_in_threadpool(
            partial(stored_metadata, projects=caller_projects(request)),
            context.db,
            study,
            series,
            sop,
        )
        if not stored:
            raise _not_found("instance" if sop else "series" if series else "study")
        base = context.base_url(request)
        etag = hashlib.sha256(
            "".join(sha for sha, _ in stored).encode() + base.encode()
        ).hexdigest()
        if _not_modified(request, etag):
            return Response(status_code=304)
        absolute = f'"BulkDataURI":"{base}/'
        body = (
            "[" + ",".join(text.replace(BULKDATA_URI_PREFIX, absolute) for _, text in stored) + "]"
        )
        return context.json_response(request, body, headers={"ETag": f'"{etag}"'})

    @router.get("/studies/{study}/metadata", summary="Retrieve a study's metadata")
    async def study_metadata(study: str, request: Request) -> Response:
        return await metadata(request, study, None, None)

    @router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve a series' metadata")
    async def series_metadata(study: str, series: str, request: Request) -> Response:
        return await metadata(request, study, series, None)

    @router.get(
        "/studies/{study}/series/{series}/instances/{sop}/metadata",
        summary="Retrieve an instance's metadata",
    )
    async def instance_metadata(study: str, series: str, sop: str, request: Request) -> Response:
        return await metadata(request, study, series, sop)

    # ------------------------------------------------------------------------------ frames

    @router.get(
        "/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}",
        summary="Retrieve frames",
    )
    def retrieve_frames(
        study: str, series: str, sop: str, frame_list: str, request: Request
    ) -> Response:
        numbers = _frame_numbers(frame_list, context.settings.max_frames_per_request)
        (instance,) = instances(request, study, series, sop)
        part_types = [OCTET_STREAM, *sorted(set(FRAME_MEDIA_TYPES.values()))]
        try:
            options = negotiate(
                request.headers.get("accept"),
                part_types,
                EXPLICIT_VR_LITTLE_ENDIAN,
                single_part=False,
            )
        except NotAcceptableError as exc:
            raise HTTPException(406, str(exc)) from None
        raw = _read(blobs.open(instance.blob_key))
        damaged: PixelDataError | None = None
        for option in options:
            syntax: str | None = option.transfer_syntax
            if option.part_type != OCTET_STREAM and syntax == EXPLICIT_VR_LITTLE_ENDIAN:
                syntax = _syntax_for_media_type(option.part_type, instance.transfer_syntax_uid)
            if syntax is None:
                continue
            try:
                encoded = frames(raw, numbers, syntax)
            except FrameNotFoundError as exc:
                raise HTTPException(404, str(exc)) from None
            except CannotTranscodeError:
                continue
            except PixelDataError as exc:
                damaged = damaged or exc  # another representation may still be possible
                continue
            if (
                option.part_type != OCTET_STREAM
                and FRAME_MEDIA_TYPES.get(encoded.transfer_syntax) != option.part_type
            ):
                continue
            writer = MultipartWriter(option.part_type)
            header = content_type(option.part_type, encoded.transfer_syntax)
            return StreamingResponse(
                _frame_batches(writer, header, encoded.parts), media_type=writer.content_type
            )
        if damaged is not None:
            raise undecodable(damaged)
        raise HTTPException(406, "the frames cannot be sent in a media type asked for")

    # ---------------------------------------------------------------------------- bulkdata

    @router.get(
        "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path:path}",
        summary="Retrieve bulk data",
    )
    def retrieve_bulkdata(
        study: str, series: str, sop: str, path: str, request: Request
    ) -> Response:
        (instance,) = instances(request, study, series, sop)
        steps = [step for step in path.split("/") if step]
        if not steps or len(steps) % 2 == 0:
            raise HTTPException(400, "a bulk data path is a tag, or sequence/item/.../tag")
        accepted = parse_accept(request.headers.get("accept"))
        single = any(r.matches(OCTET_STREAM) and r.media_type != "*/*" for r in accepted)
        multipart = any(
            r.matches("multipart/related") and r.params.get("type", OCTET_STREAM) == OCTET_STREAM
            for r in accepted
        )
        if not (single or multipart):
            raise HTTPException(406, "bulk data is available as application/octet-stream")
        try:
            value = bulkdata(_read(blobs.open(instance.blob_key)), steps)
        except CannotTranscodeError:
            raise HTTPException(406, "the pixel data cannot be decompressed here") from None
        except PixelDataError as exc:
            raise undecodable(exc) from None
        if value is None:
            raise _not_found("bulk data")
        if single and not (multipart and accepted[0].media_type.startswith("multipart")):
            return Response(value, media_type=OCTET_STREAM)
        writer = MultipartWriter(OCTET_STREAM)
        body = b"".join(writer.part(OCTET_STREAM, [value])) + writer.end()
        return Response(body, media_type=writer.content_type)

    # ------------------------------------------------------------- rendered and thumbnails

    def rendered(
        request: Request,
        found: list[StoredInstance],
        frame: int,
        thumbnail: bool,
    ) -> Response:
        options = _render_options(request, context.settings.thumbnail_size if thumbnail else None)
        instance = found[len(found) // 2] if len(found) > 1 else found[0]
        etag = hashlib.sha256(f"{instance.sha256}{frame}{options}".encode()).hexdigest()
        if _not_modified(request, etag):
            return Response(status_code=304)
        try:
            picture = render(_read(blobs.open(instance.blob_key)), frame, options)
        except FrameNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except CannotTranscodeError:
            raise HTTPException(406, "this instance's pixel data cannot be decoded here") from None
        except PixelDataError as exc:
            raise undecodable(exc) from None
        return Response(picture, media_type=options.media_type, headers={"ETag": f'"{etag}"'})

    for suffix, thumbnail in (("rendered", False), ("thumbnail", True)):
        _add_rendered_routes(router, suffix, thumbnail, instances, rendered)
    return router


def _add_rendered_routes(
    router: APIRouter,
    suffix: str,
    thumbnail: bool,
    instances: Callable[..., list[StoredInstance]],
    rendered: Callable[[Request, list[StoredInstance], int, bool], Response],
) -> None:
    title = "Retrieve a thumbnail" if thumbnail else "Retrieve a rendered image"

    @router.get(
        f"/studies/{{study}}/{suffix}", summary=f"{title} of a study", name=f"study_{suffix}"
    )
    def study_picture(study: str, request: Request) -> Response:
        return rendered(request, instances(request, study), 1, thumbnail)

    @router.get(
        f"/studies/{{study}}/series/{{series}}/{suffix}",
        summary=f"{title} of a series",
        name=f"series_{suffix}",
    )
    def series_picture(study: str, series: str, request: Request) -> Response:
        return rendered(request, instances(request, study, series), 1, thumbnail)

    @router.get(
        f"/studies/{{study}}/series/{{series}}/instances/{{sop}}/{suffix}",
        summary=f"{title} of an instance",
        name=f"instance_{suffix}",
    )
    def instance_picture(study: str, series: str, sop: str, request: Request) -> Response:
        return rendered(request, instances(request, study, series, sop), 1, thumbnail)

    @router.get(
        f"/studies/{{study}}/series/{{series}}/instances/{{sop}}/frames/{{frame}}/{suffix}",
        summary=f"{title} of a frame",
        name=f"frame_{suffix}",
    )
    def frame_picture(study: str, series: str, sop: str, frame: str, request: Request) -> Response:
        numbers = _frame_numbers(frame, 1)
        return rendered(request, instances(request, study, series, sop), numbers[0], thumbnail)


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return bool(wanted) and (wanted.strip() == "*" or f'"{etag}"' in wanted)


def _frame_numbers(frame_list: str, most: int) -> list[int]:
    """The frame numbers of a ``/frames/{list}`` path: at most ``most``, each from 1."""
    items = frame_list.split(",", most)
    if len(items) > most:
        if most == 1:
            raise HTTPException(400, "a rendered frame is one frame number")
        raise HTTPException(400, f"at most {most} frame numbers in one request")
    if not all(NUMBER.fullmatch(item) for item in items):
        raise HTTPException(
            400, "the frame list must be frame numbers (digits 0-9) separated by commas"
        )
    numbers = [int(item) for item in items]
    if any(n < 1 for n in numbers):
        raise HTTPException(400, "frame numbers start at 1")
    return numbers


def undecodable(exc: PixelDataError) -> HTTPException:
    """422 for stored pixel data no decoder here can read (or that contradicts its attributes)."""
    return HTTPException(422, f"the stored pixel data cannot be decoded: {exc}")


def _frame_batches(writer: MultipartWriter, header: str, parts: Iterable[bytes]) -> Iterator[bytes]:
    """A multipart body of frames, made and sent in batches of about FRAME_BATCH bytes: one
    frame list never holds more than a batch (and the frames being made) in memory."""
    batch: list[bytes] = []
    size = 0
    for data in parts:
        batch.extend(writer.part(header, [data]))
        size += len(data)
        if size >= FRAME_BATCH:
            yield b"".join(batch)
            batch, size = [], 0
    batch.append(writer.end())
    yield b"".join(batch)


def _syntax_for_media_type(media_type: str, stored: str) -> str | None:
    if FRAME_MEDIA_TYPES.get(stored) == media_type:
        return stored
    for syntax, frame_type in FRAME_MEDIA_TYPES.items():
        if frame_type == media_type and syntax in (
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.90",
        ):
            return syntax
    return None


def _render_options(request: Request, thumbnail_size: int | None) -> RenderOptions:
    media_type = None
    for wanted in parse_accept(request.headers.get("accept")):
        media_type = next((t for t in RENDERED_TYPES if wanted.matches(t)), None)
        if media_type:
            break
    if media_type is None:
        raise HTTPException(406, "rendered images are available as image/jpeg or image/png")
    params = request.query_params
    window, function = None, "linear"
    if "window" in params:
        parts = params["window"].split(",")
        if not 2 <= len(parts) <= 3:
            raise HTTPException(400, "window must be center,width[,function]")
        center, width = finite("window center", parts[0]), finite("window width", parts[1])
        if width <= 0:
            raise HTTPException(400, "window width must be positive")
        if len(parts) == 3:
            function = parts[2].strip().lower().replace("_", "-")
            if function not in WINDOW_FUNCTIONS:
                raise HTTPException(400, f"window function must be one of {WINDOW_FUNCTIONS}")
        window = (center, width)
    size = (thumbnail_size, thumbnail_size) if thumbnail_size else None
    if "viewport" in params:
        parts = params["viewport"].split(",")
        if len(parts) not in (2, 6) or not all(NUMBER.fullmatch(p) for p in parts[:2]):
            raise HTTPException(400, "viewport must be width,height (pixels)")
        width_px, height_px = int(parts[0]), int(parts[1])
        if not (0 < width_px <= 4096 and 0 < height_px <= 4096):
            raise HTTPException(400, "viewport sizes must be 1..4096")
        size = (width_px, height_px)
    quality = 90
    if "quality" in params:
        text = params["quality"]
        if not NUMBER.fullmatch(text) or not 1 <= int(text) <= 100:
            raise HTTPException(400, "quality must be an integer 1..100")
        quality = int(text)
    return RenderOptions(media_type, window, size, quality, function)


def finite(name: str, text: str) -> float:
    """A decimal number of a query parameter (400 unless finite)."""
    try:
        value = float(text) if len(text) <= 64 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise HTTPException(400, f"{name} must be a finite decimal number")
    return value
