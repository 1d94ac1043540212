"""A second client that keeps checking a running node while a test attacks it.

Hostile input must never stall the node: while one request works (or hangs), ``/healthz``
and a C-ECHO must still answer within a second. Use :func:`stays_responsive` around the
attack; it fails the test if any probe was slower than the limit or got no answer.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.peers import HOST, NodeProcess


@dataclass
class Probes:
    """What the checking client saw: one entry per probe, ``(kind, seconds, error)``."""

    results: list[tuple[str, float, str]] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.results if k == kind)

    def problems(self, limit: float) -> list[str]:
        return [
            f"{kind}: {error or f'{seconds:.2f} s'}"
            for kind, seconds, error in self.results
            if error or seconds > limit
        ]


def _healthz(url: str, limit: float) -> str:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=limit) as response:
            response.read()
    except urllib.error.HTTPError as exc:  # 503 is an answer: the node is alive
        exc.read()
    except Exception as exc:
        return f"no answer ({type(exc).__name__})"
    return ""


def _echo(port: int, ae_title: str, limit: float) -> str:
    ae = AE(ae_title="LIVENESS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = limit
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=ae_title)
    if not assoc.is_established:
        return "association not established"
    try:
        status = assoc.send_c_echo()
        return "" if status and status.Status == 0x0000 else "C-ECHO failed"
    finally:
        assoc.release()


@contextmanager
def stays_responsive(
    node: NodeProcess, *, limit: float = 1.0, interval: float = 0.2, dicom: bool = True
) -> Iterator[Probes]:
    """Probe ``node`` (``/healthz``, and C-ECHO unless ``dicom`` is false) every
    ``interval`` seconds while the block runs; fail if a probe took more than ``limit``."""
    probes = Probes()
    done = threading.Event()

    def probe(kind: str) -> None:
        started = time.monotonic()
        if kind == "healthz":
            error = _healthz(node.url, limit * 3)
        else:
            error = _echo(node.dicom_port, node.ae_title, limit * 3)
        probes.results.append((kind, time.monotonic() - started, error))

    def run() -> None:
        while True:
            probe("healthz")
            if dicom:
                probe("echo")
            if done.wait(interval):
                return

    thread = threading.Thread(target=run, name="liveness", daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        done.set()
        thread.join(timeout=limit * 10)
    assert probes.count("healthz") >= 1, "the liveness probe never ran"
    problems = probes.problems(limit)
    assert not problems, f"the node stalled while the test ran: {problems[:10]}"
