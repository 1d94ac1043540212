"""WADO-URI (PS3.18 9): ``/wado?requestType=WADO&studyUID=...&objectUID=...`` for older viewers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.datastructures import QueryParams

from access import Permission
from api.security import require
from catalog.locate import locate
from dicomweb.context import DicomwebContext, audited_retrieve, caller_projects, check_uid
from dicomweb.pixels import (
    CannotTranscodeError,
    FrameNotFoundError,
    PixelDataError,
    RenderOptions,
    can_transcode,
    render,
    transcode,
)
from dicomweb.wado import NUMBER, finite, undecodable

_PICTURES = ("image/jpeg", "image/png")
_MAX_SIDE = 65535


def create_wado_uri_router(context: DicomwebContext) -> APIRouter:
    router = APIRouter(
        tags=["WADO-URI"],
        dependencies=[
            Depends(require(Permission.DICOMWEB_READ)),
            Depends(audited_retrieve("WADO-URI")),
        ],
    )

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
        found = locate(
            context.db,
            uids["studyUID"],
            uids["seriesUID"],
            uids["objectUID"],
            projects=caller_projects(request),
        )
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
                except PixelDataError as exc:
                    raise undecodable(exc) from None
            if content_type in _PICTURES:
                return _picture(raw, content_type, params)
        raise HTTPException(406, "contentType must be application/dicom, image/jpeg or image/png")

    return router


def _picture(raw: bytes, media_type: str, params: QueryParams) -> Response:
    get = params.get
    frame = _integer(params, "frameNumber", 1, 1 << 31)
    quality = _integer(params, "imageQuality", 90, 100)
    if quality < 1:
        raise HTTPException(400, "imageQuality must be 1..100")
    window = None
    center, width = get("windowCenter"), get("windowWidth")
    if center is not None and width is not None:
        window = (finite("windowCenter", center), finite("windowWidth", width))
        if window[1] <= 0:
            raise HTTPException(400, "windowWidth must be positive")
    size = None
    rows, columns = get("rows"), get("columns")
    if rows is not None or columns is not None:
        height = _integer(params, "rows", _MAX_SIDE, _MAX_SIDE)
        width_px = _integer(params, "columns", _MAX_SIDE, _MAX_SIDE)
        if height < 1 or width_px < 1:
            raise HTTPException(400, f"rows and columns must be 1..{_MAX_SIDE}")
        size = (width_px, height)  # the image fits inside, keeping its aspect
    try:
        picture = render(raw, frame, RenderOptions(media_type, window, size, quality))
    except FrameNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except CannotTranscodeError:
        raise HTTPException(406, "this instance's pixel data cannot be decoded here") from None
    except PixelDataError as exc:
        raise undecodable(exc) from None
    return Response(picture, media_type=media_type)


def _integer(params: QueryParams, name: str, default: int, most: int) -> int:
    """A whole-number query parameter (digits 0-9), ``default`` when absent, 400 above
    ``most``."""
    text = params.get(name)
    if text is None:
        return default
    if not NUMBER.fullmatch(text) or int(text) > most:
        raise HTTPException(400, f"{name} must be a whole number 0..{most}")
    return int(text)
