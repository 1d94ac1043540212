"""Media types: Accept-header negotiation and multipart/related bodies (PS3.18 8.7, RFC 2387).

Header values are split by a scanner that reads each character once (a regular expression
with look-ahead over the rest of the header took quadratic time: 69 s for 400 KB), and the
DICOMweb routes refuse longer headers than :data:`MAX_HEADER_LENGTH` before reading them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
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
MAX_BOUNDARY_LENGTH = 256
"""Longest multipart boundary read: RFC 2046 allows 70, some clients send more; python-multipart
reads up to 256."""
MAX_PREAMBLE = 65536
"""Most bytes of a multipart body before its first boundary (RFC 2046's preamble)."""


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


class UnsupportedBodyError(ValueError):
    """A request body of a media type that is not read here (HTTP 415)."""


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


@dataclass(frozen=True)
class Part:
    """One instance of a request body: its Content-Type and where its bytes went in the sink
    (the ``length`` bytes after the first ``offset``)."""

    content_type: str
    offset: int
    length: int


Sink = Callable[[bytes | memoryview], object]
"""Where a reader writes the parts' bytes, in order (no boundaries, no part headers)."""


class SinglePartReader:
    """A body that is one instance (``Content-Type: application/dicom``)."""

    def __init__(self, content_type: str, sink: Sink) -> None:
        self.content_type = content_type
        self.sink = sink
        self.length = 0

    def write(self, chunk: bytes) -> None:
        self.sink(chunk)
        self.length += len(chunk)

    @property
    def parts(self) -> list[Part]:
        return [Part(self.content_type, 0, self.length)] if self.length else []

    def finish(self) -> list[Part]:
        return self.parts


class MultipartReader:
    """A multipart/related body (RFC 2387), read chunk by chunk as it arrives.

    Each part's bytes go to ``sink`` as python-multipart finds them, so no part is held in
    memory; :attr:`parts` says where each one went.

    Raises
    ------
    BadMultipartError
        From the constructor: no usable boundary; from :meth:`write`: a malformed body; from
        :meth:`finish`: a body that ended before its closing boundary.
    """

    def __init__(self, content_type: str, sink: Sink) -> None:
        boundary = parse_media_type(content_type).params.get("boundary", "")
        if not boundary:
            raise BadMultipartError("Content-Type has no boundary parameter")
        if len(boundary) > MAX_BOUNDARY_LENGTH:
            raise BadMultipartError(
                f"the multipart boundary is longer than {MAX_BOUNDARY_LENGTH} characters "
                "(RFC 2046 allows 70)"
            )
        self.sink = sink
        self.parts: list[Part] = []
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._preamble: bytearray | None = bytearray()
        self._written = 0
        self._begun = 0
        self._headers: dict[str, str] = {}
        self._name: list[bytes] = []
        self._value: list[bytes] = []
        self._finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        if self._preamble is not None:  # python-multipart expects the first boundary first
            self._preamble += chunk
            start = self._preamble.find(self._delimiter)
            if start < 0:
                if len(self._preamble) > MAX_PREAMBLE + len(self._delimiter):
                    raise BadMultipartError(
                        f"no boundary of the Content-Type in the first {MAX_PREAMBLE} bytes"
                    )
                return
            chunk = bytes(self._preamble[start:])
            self._preamble = None
        try:
            self._parser.write(chunk)
        except OSError:
            raise  # the sink's (a full disk), not the body's
        except Exception as exc:  # the parser's own errors name no data
            raise BadMultipartError(f"malformed multipart body ({type(exc).__name__})") from None

    def finish(self) -> list[Part]:
        """The parts, once the whole body was written."""
        if self._preamble is not None:
            raise BadMultipartError("the body has no part with the boundary of its Content-Type")
        if not self._finished:
            raise BadMultipartError("multipart body is truncated (no closing boundary)")
        return self.parts

    def _on_part_begin(self) -> None:
        self._headers.clear()
        self._begun = self._written

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.sink(memoryview(data)[start:end])
        self._written += end - start

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name.append(data[start:end])

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.append(data[start:end])

    def _on_header_end(self) -> None:
        name = b"".join(self._name).decode("latin-1").lower()
        self._headers[name] = b"".join(self._value).decode("latin-1")
        self._name.clear()
        self._value.clear()

    def _on_part_end(self) -> None:
        content_type = self._headers.get("content-type", "")
        self.parts.append(Part(content_type, self._begun, self._written - self._begun))

    def _on_end(self) -> None:
        self._finished = True


BodyReader = SinglePartReader | MultipartReader


def body_reader(content_type: str, sink: Sink) -> BodyReader:
    """The reader of a STOW-RS body: one instance (``application/dicom``, as Google's Cloud
    Healthcare API takes it) or several (``multipart/related`` whose ``type`` is
    ``application/dicom`` or absent).

    Raises
    ------
    UnsupportedBodyError
        Any other media type.
    BadMultipartError
        A multipart/related type without a usable boundary.
    """
    declared = parse_media_type(content_type)
    if declared.media_type == DICOM:
        return SinglePartReader(content_type, sink)
    if declared.media_type == MULTIPART and declared.params.get("type", DICOM).lower() == DICOM:
        return MultipartReader(content_type, sink)
    raise UnsupportedBodyError(
        f'send {DICOM} (one instance) or {MULTIPART}; type="{DICOM}" (any number)'
    )
