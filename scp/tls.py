"""DICOM over TLS (PS3.15 Annex B): the server's SSL context, the handshake, and the names
a client certificate gives.

pynetdicom wraps each accepted socket with ``SSLContext.wrap_socket`` inside its accept
loop, where a handshake would block: one connection that sends nothing would hold up every
other association for as long as the socket waits (measured: 11 s). The context below wraps
without handshaking; :func:`handshake` does it on ``evt.EVT_CONN_OPEN``, in the connection's
own thread, and logs why a peer failed (no certificate, an untrusted one, not TLS at all).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import Any

from pynetdicom.association import Association
from pynetdicom.events import Event

from config.dicom_access import DicomTlsSettings

log = logging.getLogger(__name__)


class TlsConfigError(RuntimeError):
    """The certificate, key or CA file of ``dicom_tls`` cannot be used; the message says
    which file and why (never a key's content)."""


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSL context whose server sockets handshake later (:func:`handshake`), not when
    pynetdicom wraps them in its accept loop; until then a socket waits at most
    ``handshake_timeout`` seconds for the peer."""

    handshake_timeout = 10.0

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        sock.settimeout(self.handshake_timeout)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def server_context(tls: DicomTlsSettings, handshake_timeout: float) -> ssl.SSLContext:
    """The context of the TLS port: TLS 1.2 or later (the BCP 195 profiles of PS3.15 B.9 and
    B.10), the node's certificate, and client certificates checked against ``ca_file``."""
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.handshake_timeout = handshake_timeout
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate is None or tls.key is None:
        raise TlsConfigError("dicom_tls needs certificate and key")
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"dicom_tls.certificate {tls.certificate} with dicom_tls.key {tls.key} cannot be "
            f"used: {_why(exc)}"
        ) from None
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"dicom_tls.ca_file {tls.ca_file} cannot be used: {_why(exc)}"
            ) from None
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # a certificate shown must still verify
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or type(exc).__name__).lower().replace("_", " ")
    return (exc.strerror or type(exc).__name__).lower()


def tls_socket(assoc: Association) -> ssl.SSLSocket | None:
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    return sock if isinstance(sock, ssl.SSLSocket) else None


def is_tls(assoc: Association) -> bool:
    """Whether ``assoc`` came in on the TLS port."""
    return tls_socket(assoc) is not None


def handshake(event: Event) -> None:
    """``evt.EVT_CONN_OPEN`` of the TLS port: the TLS handshake, in this connection's thread.

    A peer that fails it (no certificate or an untrusted one when one is required, plain
    DICOM, a stall past the handshake timeout) is logged with the reason and disconnected.
    """
    assoc = event.assoc
    sock = tls_socket(assoc)
    if sock is None:
        return
    try:
        sock.do_handshake()
        sock.settimeout(None)  # then as on the plain port: acse/network timeouts apply
    except (OSError, ValueError) as exc:
        log.warning(
            "DICOM TLS connection from %s:%s refused: %s",
            assoc.requestor.address,
            assoc.requestor.port,
            _handshake_failure(exc),
        )
        # Closed before the association's reader starts (it then sees a closed connection),
        # so it never reads what the peer sent as if it were plain DICOM.
        with contextlib.suppress(OSError):  # already gone
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        assoc.acse_timeout = 0  # no A-ASSOCIATE-RQ can come: its thread ends at once


_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}


def _handshake_failure(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason in _NOT_TLS:
            return "not a TLS handshake (plain DICOM on the TLS port?)"
        if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return "connection closed during the TLS handshake"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate (dicom_tls.require_client_certificate)"
        return f"TLS handshake failed ({reason.lower().replace('_', ' ') or exc})"
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    return f"connection closed during the TLS handshake ({type(exc).__name__})"


def certificate_names(assoc: Association) -> tuple[str, ...]:
    """The subject CNs and DNS subjectAltNames of the peer's verified certificate."""
    sock = tls_socket(assoc)
    cert: dict[str, Any] | None = sock.getpeercert() if sock is not None else None
    if not cert:
        return ()
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return tuple(names)
