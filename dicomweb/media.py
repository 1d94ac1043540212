"""Media types: Accept-header negotiation and multipart/related bodies (PS3.18 8.7, RFC 2387).

Header values are split by a scanner that reads each character once (a regular expression
with look-ahead over the rest of the header took quadratic time: 69 s for 400 KB), and the
DICOMweb routes refuse longer headers than :data:`MAX_HEADER_LENGTH` before reading them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"

MAX_HEADER_LENGTH = 8192
"""Longest Accept or Content-Type header read (a client listing every transfer syntax it
knows needs about 2,000 characters)."""


def split_unquoted(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` outside a quoted string (RFC 9110 5.6.4), in one
    pass."""
    if '"' not in text:
        return text.split(separator)
    items: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            items.append(text[start:index])
            start = index + 1
    items.append(text[start:])
    return items


async def check_header_lengths(request: Request) -> None:
    """A route dependency: HTTP 400 for an Accept or Content-Type header longer than
    :data:`MAX_HEADER_LENGTH`, before anything parses it."""
    for name in ("accept", "content-type"):
        for value in request.headers.getlist(name):
            if len(value) > MAX_HEADER_LENGTH:
                title = "-".join(part.capitalize() for part in name.split("-"))
                raise HTTPException(
                    400, f"the {title} header is longer than {MAX_HEADER_LENGTH} characters"
                )


class NotAcceptableError(Exception):
    """No representation the client accepts can be produced (HTTP 406)."""


class BadMultipartError(ValueError):
    """A multipart/related body that cannot be read (HTTP 400); the message says why."""


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type="application/dicom"``."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    def matches(self, media_type: str) -> bool:
        main, _, sub = media_type.partition("/")
        wanted_main, _, wanted_sub = self.media_type.partition("/")
        return wanted_main in ("*", main) and wanted_sub in ("*", sub)


def parse_media_type(text: str) -> MediaRange:
    """A media type with its parameters (names lower-cased, values unquoted)."""
    parts = [part.strip() for part in split_unquoted(text, ";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    quality = 1.0
    if "q" in params:
        try:
            quality = float(params.pop("q"))
        except ValueError:
            quality = 0.0
        if not 0.0 <= quality <= 1.0:  # also NaN
            quality = 0.0
    return MediaRange(parts[0].lower(), params, quality)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The entries of an Accept header, best first (``*/*`` when there is none)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(i) for i in split_unquoted(header, ",") if i.strip()]
    ranges = [r for r in ranges if r.quality > 0]
    return sorted(ranges, key=lambda r: -r.quality)


@dataclass(frozen=True)
class Representation:
    """What to send: single part or multipart, the part's media type, a transfer syntax
    (``"*"``: as stored)."""

    multipart: bool
    part_type: str
    transfer_syntax: str


def negotiate(
    accept: str | None,
    part_types: Iterable[str],
    default_transfer_syntax: str,
    *,
    single_part: bool,
) -> list[Representation]:
    """The acceptable representations in the client's order of preference.

    ``part_types`` are the media types the resource can be sent as (first: the default);
    ``single_part`` says whether it may be sent without a multipart wrapper.
    """
    types = list(part_types)
    options: list[Representation] = []
    for wanted in parse_accept(accept):
        syntax = wanted.params.get("transfer-syntax", default_transfer_syntax)
        if wanted.media_type == MULTIPART:
            part = MediaRange(wanted.params.get("type", types[0]).lower())
            chosen = next((t for t in types if part.matches(t)), None)
            if chosen is not None:
                options.append(Representation(True, chosen, syntax))
        elif wanted.media_type in types and single_part:
            options.append(Representation(False, wanted.media_type, syntax))
        elif wanted.matches(MULTIPART):  # */* and multipart/*
            options.append(Representation(True, types[0], syntax))
    if not options:
        raise NotAcceptableError(f"acceptable here: {MULTIPART}; type=" + " or ".join(types))
    return options


def content_type(media_type: str, transfer_syntax: str | None) -> str:
    return f"{media_type}; transfer-syntax={transfer_syntax}" if transfer_syntax else media_type


PART_TRAILER = b"\r\n"


class MultipartWriter:
    """Writes a multipart/related body part by part, as the parts become available."""

    def __init__(self, part_type: str) -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f'{MULTIPART}; type="{part_type}"; boundary={self.boundary}'

    def part(self, part_content_type: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        yield self.part_header(part_content_type)
        yield from chunks
        yield PART_TRAILER

    def part_header(self, part_content_type: str) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: {part_content_type}\r\n\r\n".encode()

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()


def read_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The parts ``(content type, bytes)`` of a complete multipart/related body.

    Raises
    ------
    BadMultipartError
        No boundary, or a body that ends before its closing boundary.
    """
    header = parse_media_type(content_type)
    if header.media_type != MULTIPART:
        raise BadMultipartError(f"Content-Type must be {MULTIPART}")
    boundary = header.params.get("boundary")
    if not boundary:
        raise BadMultipartError("Content-Type has no boundary parameter")
    parts: list[tuple[str, bytes]] = []
    chunks: list[bytes] = []
    headers: dict[str, str] = {}
    name: list[bytes] = []
    value: list[bytes] = []
    finished = []

    def on_part_begin() -> None:
        chunks.clear()
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.append(data[start:end])

    def on_header_end() -> None:
        headers[b"".join(name).decode("latin-1").lower()] = b"".join(value).decode("latin-1")
        name.clear()
        value.clear()

    def on_part_end() -> None:
        parts.append((headers.get("content-type", ""), b"".join(chunks)))

    def on_end() -> None:
        finished.append(True)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    start = body.find(b"--" + boundary.encode("latin-1"))
    if start < 0:
        raise BadMultipartError("the body has no part with the boundary of its Content-Type")
    try:
        parser.write(body[start:])  # what comes before the first boundary is a preamble
        parser.finalize()
    except Exception as exc:  # the parser's own errors name no data
        raise BadMultipartError(f"malformed multipart body ({type(exc).__name__})") from None
    if not finished or not body.rstrip().endswith(f"--{boundary}--".encode()):
        raise BadMultipartError("multipart body is truncated (no closing boundary)")
    return parts
