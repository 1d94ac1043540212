"""Deadlines on reading HTTP requests, which uvicorn does not have.

uvicorn (0.55, httptools) times out only the idle gap between two requests of a keep-alive
connection (``timeout_keep_alive``). A connection that sends nothing, or its headers one
byte a second, or a body one byte a second, is kept forever: 300 of them were all open
hours later. (``h11_max_incomplete_event_size`` only caps header size, and only for the h11
parser.) This is uvicorn's httptools protocol with four more rules:

- the request line and headers must arrive within ``header_timeout`` seconds of the
  connection (or, on a kept-alive connection, of the request's first byte);
- they may not exceed ``max_header_bytes`` (431);
- a body must bring at least ``BODY_MIN_BYTES`` in every ``body_timeout`` seconds while the
  node is reading it (time the node itself stopped reading, to apply back-pressure, does
  not count);
- a connection that breaks a rule is closed (with ``408``/``431`` when no response has
  started) and one line is logged, without the path (it may hold UIDs).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

BODY_MIN_BYTES = 1024


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 65536


def guarded_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) enforcing ``limits``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._reading_head = True
            self._head_bytes = 0
            self._body_bytes = 0

        # --------------------------------------------------- connection and parser events

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(limits.header_timeout, self._head_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._reading_head:
                self._head_bytes += len(data)
            else:
                self._body_bytes += len(data)
            super().data_received(data)
            if self._reading_head and self._head_bytes > limits.max_header_bytes:
                self._refuse(431, "request line and headers too large", "http_max_header_bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading_head = True
            if self._deadline is None:  # a kept-alive connection's next request
                self._arm(limits.header_timeout, self._head_too_slow)

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._head_bytes = self._body_bytes = 0
            self._disarm()
            super().on_headers_complete()
            if not self.transport.is_closing():
                self._arm(limits.body_timeout, self._check_body)

        def on_message_complete(self) -> None:
            self._disarm()
            self._reading_head, self._head_bytes = True, 0  # what comes next is a new request
            super().on_message_complete()

        # ------------------------------------------------------------------- the rules

        def _arm(self, delay: float, callback: Any) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(delay, callback)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _head_too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._head_bytes == 0:  # nothing sent: an idle or half-open connection
                log.debug("HTTP connection from %s closed: no request", self._peer())
                self.transport.close()
                return
            self._refuse(408, "request headers not received in time", "http_header_timeout")

        def _check_body(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
                return
            if self._body_bytes >= BODY_MIN_BYTES or self.flow.read_paused:
                self._body_bytes = 0
                self._arm(limits.body_timeout, self._check_body)
                return
            log.warning(
                "HTTP %s from %s: request body too slow (under %d bytes in %g s, "
                "http_body_timeout); connection closed",
                self.scope.get("method", "?"),
                self._peer(),
                BODY_MIN_BYTES,
                limits.body_timeout,
            )
            self.transport.close()

        def _refuse(self, status: int, reason: str, setting: str) -> None:
            self._disarm()
            log.warning("HTTP request from %s refused: %s (%s)", self._peer(), reason, setting)
            if self.cycle is None or self.cycle.response_complete:
                body = f"{reason} ({setting})".encode()
                self.transport.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (status, _PHRASES[status], len(body), body)
                )
            self.transport.close()

        def _peer(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    return GuardedHttpToolsProtocol


_PHRASES = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
