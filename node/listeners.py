"""The node's listeners (DICOM, DICOM TLS, HTTP, MLLP): where each is configured, and an error
that says which one could not listen, on which address, and how to move it."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any, Final

from config import Settings


@dataclass(frozen=True)
class Listener:
    """One listener and its host/port settings (``section.key`` for nested ones)."""

    name: str
    host_setting: str
    port_setting: str
    cli_options: bool = True
    """Whether ``serve`` has options named after the settings (``--dicom-port``)."""

    def address(self, settings: Settings) -> tuple[str, int]:
        return str(_setting(settings, self.host_setting)), int(
            _setting(settings, self.port_setting)
        )


DICOM: Final = Listener("DICOM", "dicom_host", "dicom_port")
DICOM_TLS: Final = Listener("DICOM TLS", "dicom_tls.host", "dicom_tls.port", cli_options=False)
HTTP: Final = Listener("HTTP", "http_host", "http_port")
MLLP: Final = Listener("MLLP (HL7 v2)", "labeling.mllp_host", "labeling.mllp_port")


class ListenerError(RuntimeError):
    """A listener cannot listen on its address; the message says which, where, why, and the
    option, environment variable and config key that move it."""

    def __init__(self, listener: Listener, host: str, port: int, cause: OSError) -> None:
        why = {
            errno.EADDRINUSE: "the address is already in use (another program, or another "
            "node, listens there)",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "the address is not one of this machine's",
        }.get(cause.errno or 0, (cause.strerror or type(cause).__name__).lower())
        super().__init__(
            f"the {listener.name} listener cannot listen on {host}:{port}: {why}. "
            f"Choose another port with {_ways(listener.port_setting, listener.cli_options)}, "
            f"or another address with {_ways(listener.host_setting, listener.cli_options)}"
        )
        self.listener = listener


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon), as uvicorn binds
    its own; ``OSError`` when the address cannot be had. ``reuse_port``: with
    ``SO_REUSEPORT``, so processes of this node can bind the same port (DICOM workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _ways(setting: str, cli_options: bool) -> str:
    option = "--" + setting.rpartition(".")[2].replace("_", "-")
    env = "PACSNODE_" + setting.upper().replace(".", "__")
    if not cli_options:
        return f"{env} ({setting} in the config file)"
    return f"{option} or {env} ({setting} in the config file)"


def _setting(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
