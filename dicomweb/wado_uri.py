"""WADO-URI (PS3.18 9): ``/wado?requestType=WADO&studyUID=...&objectUID=...`` for older viewers."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.datastructures import QueryParams

from catalog.locate import locate
from dicomweb.context import DicomwebContext, check_uid
from dicomweb.pixels import (
    CannotTranscodeError,
    FrameNotFoundError,
    RenderOptions,
    can_transcode,
    render,
    transcode,
)

_PICTURES = ("image/jpeg", "image/png")


def create_wado_uri_router(context: DicomwebContext) -> APIRouter:
    router = APIRouter(tags=["WADO-URI"])

    @router.get("/wado", summary="WADO-URI: retrieve one instance")
    def wado(request: Request) -> Response:
        params = request.query_params
        if params.get("requestType") != "WADO":
            raise HTTPException(400, "requestType must be WADO")
        uids = {}
        for name in ("studyUID", "seriesUID", "objectUID"):
            if not params.get(name):
                raise HTTPException(400, f"{name} is required")
            uids[name] = check_uid(name, params[name])
        found = locate(context.db, uids["studyUID"], uids["seriesUID"], uids["objectUID"])
        if not found:
            raise HTTPException(404, "instance not found")
        (instance,) = found
        wanted = [
            t.split(";")[0].strip() for t in params.get("contentType", "image/jpeg").split(",")
        ]
        with context.blobs.open(instance.blob_key) as stream:
            raw = stream.read()
        for content_type in wanted:
            if content_type == "application/dicom":
                syntax = params.get("transferSyntax", instance.transfer_syntax_uid)
                if not can_transcode(
                    instance.transfer_syntax_uid, syntax, instance.rows is not None
                ):
                    continue
                try:
                    return Response(transcode(raw, syntax), media_type="application/dicom")
                except CannotTranscodeError:
                    continue
            if content_type in _PICTURES:
                return _picture(raw, content_type, params)
        raise HTTPException(406, "contentType must be application/dicom, image/jpeg or image/png")

    return router


def _picture(raw: bytes, media_type: str, params: QueryParams) -> Response:
    get = params.get
    try:
        frame = int(get("frameNumber", "1"))
        window = None
        center, width = get("windowCenter"), get("windowWidth")
        if center is not None and width is not None:
            window = (float(center), float(width))
        size = None
        rows, columns = get("rows"), get("columns")
        if rows or columns:
            size = (int(columns or rows or 0), int(rows or columns or 0))
        quality = int(get("imageQuality", "90"))
    except ValueError:
        raise HTTPException(
            400, "frameNumber, windowCenter, windowWidth, rows, columns, imageQuality: numbers"
        ) from None
    if not 1 <= quality <= 100:
        raise HTTPException(400, "imageQuality must be 1..100")
    try:
        picture = render(raw, frame, RenderOptions(media_type, window, size, quality))
    except FrameNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except CannotTranscodeError:
        raise HTTPException(406, "this instance's pixel data cannot be decoded here") from None
    return Response(picture, media_type=media_type)
