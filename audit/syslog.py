"""DICOM audit messages to a syslog collector: RFC 5424 messages over TLS (RFC 5425).

:meth:`SyslogSender.send` frames a message and puts it on a bounded queue (the oldest is
dropped, and counted, when it is full); one daemon thread connects, sends and reconnects with
backoff when the collector goes away. Nothing here blocks or raises into the caller, and
nothing of a message is ever logged. As DICOM PS3.15 A.6 and IHE ITI-20 have it: facility 10
(security/authorization), severity 5 (notice) or 4 (warning), MSGID ``IHE+RFC-3881``, the XML
after a UTF-8 BOM, each message framed as ``MSG-LEN SP SYSLOG-MSG`` (octet counting).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from config.audit import SyslogSettings

log = logging.getLogger("pacsnode.audit")

FACILITY: Final = 10
"""security/authorization messages."""
NOTICE: Final = 5
"""Severity of an event that succeeded."""
WARNING: Final = 4
"""Severity of an event that was refused or failed."""
MSGID: Final = "IHE+RFC-3881"
BOM: Final = b"\xef\xbb\xbf"


def severity_for(outcome: str) -> int:
    """Notice for ``ok``, warning for anything else."""
    return NOTICE if outcome == "ok" else WARNING


@dataclass(frozen=True)
class SyslogStats:
    sent: int
    """Messages written to a collector's connection."""
    dropped: int
    """Messages lost to a full queue (or sent after :meth:`SyslogSender.close`)."""
    queued: int
    connected: bool


class SyslogSender:
    """Sends framed messages to ``settings.host``:``settings.port`` from a daemon thread.

    The TLS context is made here, so a missing or unreadable CA, certificate or key (or a
    wrong key password) raises at construction; the collector's certificate must chain to
    ``settings.cafile`` (or the system's CAs) and name ``settings.host``.
    """

    def __init__(
        self,
        settings: SyslogSettings,
        hostname: str,
        *,
        min_backoff: float = 0.5,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        if settings.host is None:
            raise ValueError("audit.syslog.host is not set")
        self.host: Final = settings.host
        self.port: Final = settings.port
        self._context = _client_context(settings)
        self._header = " ".join(
            (
                _field(hostname, 255),
                _field(settings.app_name, 48),
                _field(str(os.getpid()), 128),
                MSGID,
                "-",
            )
        )
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._queue: deque[bytes] = deque()
        self._limit = settings.queue_size
        self._lock = threading.Condition()
        self._sent = 0
        self._dropped = 0
        self._closing = False
        self._deadline = 0.0
        self._socket: ssl.SSLSocket | None = None
        self._failing = False
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, message_xml: bytes, at: datetime, severity: int = NOTICE) -> None:
        """Queue one message (``at``: when the event happened; naive is UTC). Never blocks."""
        frame = self._frame(message_xml, at, severity)
        with self._lock:
            if self._closing:
                self._dropped += 1
                return
            if self._queue and len(self._queue) + self._in_flight >= self._limit:
                self._queue.popleft()
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    log.warning(
                        "audit syslog %s:%d: queue full (%d), %d messages dropped so far",
                        self.host,
                        self.port,
                        self._limit,
                        self._dropped,
                    )
            self._queue.append(frame)
            self._lock.notify()

    def stats(self) -> SyslogStats:
        with self._lock:
            queued = len(self._queue) + self._in_flight
            return SyslogStats(self._sent, self._dropped, queued, self._socket is not None)

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within ``timeout`` seconds, then stop the thread."""
        with self._lock:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._lock.notify_all()
        self._thread.join(timeout + 1.0)
        self._disconnect()

    # ------------------------------------------------------------------------------ thread

    def _frame(self, message_xml: bytes, at: datetime, severity: int) -> bytes:
        """``MSG-LEN SP <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``."""
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        timestamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        pri = FACILITY * 8 + min(max(severity, 0), 7)
        message = f"<{pri}>1 {timestamp} {self._header} ".encode("ascii") + BOM + message_xml
        return f"{len(message)} ".encode("ascii") + message

    def _run(self) -> None:
        try:
            self._send_queued()
        finally:
            self._disconnect()

    def _send_queued(self) -> None:
        backoff = self._min_backoff
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue or (self._closing and time.monotonic() >= self._deadline):
                    return
                frame = self._queue.popleft()
                self._in_flight = 1
            delivered = self._deliver(frame)
            with self._lock:
                self._in_flight = 0
                if delivered:
                    self._sent += 1
                elif len(self._queue) < self._limit:
                    self._queue.appendleft(frame)
                else:
                    self._dropped += 1
            if delivered:
                backoff = self._min_backoff
                continue
            self._pause(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt (new messages do not cut it short; a
        close shortens it to the close's deadline)."""
        end = time.monotonic() + seconds
        with self._lock:
            while (
                remaining := (min(end, self._deadline) if self._closing else end) - time.monotonic()
            ) > 0:
                self._lock.wait(remaining)

    def _deliver(self, frame: bytes) -> bool:
        """Write ``frame`` on the connection (made when there is none, or the collector
        closed it); False when it could not be."""
        sock = self._socket
        if sock is not None and _closed_by_peer(sock, self._timeout):
            log.warning(
                "audit syslog %s:%d: the collector closed the connection", self.host, self.port
            )
            self._disconnect()
            sock = None
        if sock is None:
            sock = self._connect()
            if sock is None:
                return False
        try:
            sock.sendall(frame)
        except (OSError, ValueError) as error:
            log.warning("audit syslog %s:%d: send failed: %s", self.host, self.port, _reason(error))
            self._disconnect()
            return False
        return True

    def _connect(self) -> ssl.SSLSocket | None:
        raw: socket.socket | None = None
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
            sock = self._context.wrap_socket(raw, server_hostname=self.host)
        except (OSError, ValueError) as error:
            if raw is not None:
                raw.close()
            # the first failure in a row is a warning, the retries that follow debug lines
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(
                level,
                "audit syslog %s:%d: cannot connect: %s",
                self.host,
                self.port,
                _reason(error),
            )
            return None
        self._failing = False
        log.info("audit syslog %s:%d: connected (%s)", self.host, self.port, sock.version())
        with self._lock:
            self._socket = sock
        return sock

    def _disconnect(self) -> None:
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def _client_context(settings: SyslogSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.cafile) if settings.cafile is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.certfile is not None and settings.keyfile is not None:
        password = settings.keyfile_password
        context.load_cert_chain(
            settings.certfile,
            settings.keyfile,
            password=password.get_secret_value() if password is not None else None,
        )
    return context


def _closed_by_peer(sock: ssl.SSLSocket, timeout: float) -> bool:
    """Whether the collector closed the connection (a collector never writes to it; what it
    may send is TLS housekeeping, such as TLS 1.3 session tickets, read and ignored here)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(4096) == b""
        finally:
            sock.settimeout(timeout)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except (OSError, ValueError):
        return True


def _field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, at most ``limit`` characters, ``-``
    when empty."""
    text = "".join(c if "!" <= c <= "~" else "_" for c in value)[:limit]
    return text or "-"


def _reason(error: BaseException) -> str:
    """Why a connection failed, for the log (the error's class and text; never a message)."""
    return f"{type(error).__name__}: {error}"
