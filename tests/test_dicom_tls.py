"""DICOM over TLS (PS3.15 Annex B) on the node's second port.

The test makes its own PKI (``tests/pki.py``): a CA the node trusts, the node's certificate
for 127.0.0.1, client certificates whose CN is the calling AE title, and a rogue CA's client
certificate. Clients are pynetdicom (``tls_args``) and dcmtk (``echoscu``/``storescu +tls``,
Debian's dcmtk is built with OpenSSL). One node per module, in process, requires client
certificates and checks that they name the calling AE title; one more test starts
``pacsnode serve`` to check the wiring of the TLS listener.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from typer.testing import CliRunner

from catalog import catalog_stats
from config import load_settings
from node.app import Core, build_core
from node.cli import app
from scp import DicomServer
from tests.dicom_bytes import sample
from tests.peers import HOST, dcmtk, free_ports, pacsnode_process
from tests.pki import Authority, KeyPair

pytestmark = pytest.mark.slow

ACSE_TIMEOUT = 10.0  # a handshake in pynetdicom's accept loop would hold it this long


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: KeyPair
    modality: KeyPair  # CN MODALITY1
    tls_only: KeyPair  # CN TLSONLY
    by_san: KeyPair  # CN ct7.radiology.example, DNS subjectAltName CT_ROOM7
    rogue: KeyPair  # CN MODALITY1, issued by a CA nobody trusts


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder, "hospital")
    return Pki(
        ca,
        ca.server(),
        ca.client("MODALITY1"),
        ca.client("TLSONLY"),
        ca.client("ct7.radiology.example", dns=("CT_ROOM7",)),
        Authority(folder, "rogue").client("MODALITY1"),
    )


@dataclass(frozen=True)
class Node:
    server: DicomServer
    core: Core

    @property
    def port(self) -> int:
        return self.server.tls_port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Node]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("dicom-tls") / "data",
        dicom_port=0,
        fsync=False,
        acse_timeout=ACSE_TIMEOUT,
        allowed_calling_aets=[
            "MODALITY1",
            "OTHER",
            "CT_ROOM7",
            {"ae_title": "TLSONLY", "require_tls": True},
        ],
        dicom_tls={
            "enabled": True,
            "port": 0,
            "certificate": pki.server.certificate,
            "key": pki.server.key,
            "ca_file": pki.ca.ca_file,
            "match_calling_aet": True,
        },
    )
    core = build_core(settings)
    server = DicomServer(settings, core.ingestor)
    server.start()
    server.start_tls()
    try:
        yield Node(server, core)
    finally:
        server.stop(grace=1)
        core.close()


def client_context(pki: Pki, pair: KeyPair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca.ca_file)
    if pair is not None:
        context.load_cert_chain(pair.certificate, pair.key)
    return context


def associate(
    port: int, calling: str, context: ssl.SSLContext | None, timeout: float = 10
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    tls_args = (context, "localhost") if context is not None else None
    return ae.associate(HOST, port, ae_title="PACSNODE", tls_args=tls_args)


def dcmtk_tls(
    tool: str, pki: Pki, pair: KeyPair | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """``echoscu``/``storescu`` over TLS: with a client certificate (``+tls key crt``) or
    without one (``+tla``), trusting the test CA (``+cf``)."""
    tls = ["+tls", str(pair.key), str(pair.certificate)] if pair is not None else ["+tla"]
    return subprocess.run(
        [dcmtk(tool), *tls, "+cf", str(pki.ca.ca_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def wait_for(
    caplog: pytest.LogCaptureFixture, text: str, count: int = 1, timeout: float = 10
) -> str:
    """The last log line holding ``text``, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in messages(caplog) if text in m]
        if len(found) >= count:
            return found[-1]
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.05)


def assert_threads_end(node: Node) -> None:
    """A refused connection's thread ends at once, not after acse_timeout."""
    deadline = time.monotonic() + ACSE_TIMEOUT / 4
    while node.server.active_associations():
        assert time.monotonic() < deadline, "a refused connection still has its thread"
        time.sleep(0.05)


# --------------------------------------------------------------------------------- tests


def test_pynetdicom_stores_over_tls_with_a_trusted_certificate(
    node: Node, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    before = catalog_stats(node.core.db).instances
    assoc = associate(node.port, "MODALITY1", client_context(pki, pki.modality))
    assert assoc.is_established
    try:
        assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)  # type: ignore[union-attr]
        assert assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        assert int(assoc.send_c_echo().Status) == 0
        assert int(assoc.send_c_store(sample("CT_small.dcm")).Status) == 0
    finally:
        assoc.release()
    assert catalog_stats(node.core.db).instances == before + 1
    assert any(
        m.startswith("association accepted from MODALITY1 (127.0.0.1:") and m.endswith(", TLS)")
        for m in messages(caplog)
    )


def test_dcmtk_echoes_and_stores_over_tls(node: Node, pki: Pki) -> None:
    before = catalog_stats(node.core.db).instances
    address = ["-aet", "MODALITY1", "-aec", "PACSNODE", HOST, str(node.port)]
    echoed = dcmtk_tls("echoscu", pki, pki.modality, *address)
    assert echoed.returncode == 0, echoed.stderr
    stored = dcmtk_tls("storescu", pki, pki.modality, *address, get_testdata_file("MR_small.dcm"))
    assert stored.returncode == 0, stored.stderr
    assert catalog_stats(node.core.db).instances == before + 1


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("no certificate", "no client certificate (dicom_tls.require_client_certificate)"),
        ("rogue certificate", "client certificate not trusted (unable to get local issuer"),
    ],
)
def test_a_client_without_a_trusted_certificate_is_refused(
    node: Node, pki: Pki, caplog: pytest.LogCaptureFixture, who: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    pair = pki.rogue if who == "rogue certificate" else None
    assoc = associate(node.port, "MODALITY1", client_context(pki, pair))
    assert not assoc.is_established
    result = dcmtk_tls(
        "echoscu", pki, pair, "-aet", "MODALITY1", "-aec", "PACSNODE", HOST, str(node.port)
    )
    assert result.returncode != 0
    line = wait_for(caplog, reason, count=2)  # pynetdicom's and dcmtk's
    assert line.startswith("DICOM TLS connection from 127.0.0.1:") and "refused" in line
    assert_threads_end(node)
    assert not any("association accepted" in m for m in messages(caplog))


def test_plain_dicom_to_the_tls_port_is_refused(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    assert not associate(node.port, "MODALITY1", None).is_established
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", "MODALITY1", "-aec", "PACSNODE", HOST, str(node.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    wait_for(caplog, "refused: not a TLS handshake (plain DICOM on the TLS port?)", count=2)
    assert_threads_end(node)
    assert not any("association accepted" in m for m in messages(caplog))


def test_the_certificate_must_name_the_calling_ae_title(
    node: Node, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scp")
    spoofed = associate(node.port, "OTHER", client_context(pki, pki.modality))
    assert spoofed.is_rejected
    answer = spoofed.acceptor.primitive
    assert answer is not None
    assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, 0x03)
    line = wait_for(caplog, "association rejected from 'OTHER'")
    assert line.endswith(
        "to 'PACSNODE': client certificate names 'MODALITY1', not the calling AE title "
        "(dicom_tls.match_calling_aet)"
    )
    assert ", TLS)" in line
    by_san = associate(node.port, "CT_ROOM7", client_context(pki, pki.by_san))
    assert by_san.is_established  # named by a DNS subjectAltName
    by_san.release()


def test_an_ae_title_bound_to_tls_is_accepted_there_only(node: Node, pki: Pki) -> None:
    over_tls = associate(node.port, "TLSONLY", client_context(pki, pki.tls_only))
    assert over_tls.is_established
    over_tls.release()
    assert associate(node.server.port, "TLSONLY", None).is_rejected


def test_idle_connections_do_not_hold_up_other_associations(node: Node, pki: Pki) -> None:
    """pynetdicom wraps each socket in its accept loop: a handshake there would make every
    association wait for connections that send nothing (up to ACSE_TIMEOUT each)."""
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(socket.create_connection((HOST, node.port)))
        time.sleep(0.2)  # accepted and wrapped by now
        started = time.monotonic()
        assoc = associate(node.port, "MODALITY1", client_context(pki, pki.modality))
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert time.monotonic() - started < 2.0


# ----------------------------------------------------------------------------- the node


def test_serve_listens_for_tls_and_says_which_listener_cannot(pki: Pki, tmp_path: Path) -> None:
    dicom_port, tls_port, http_port = free_ports(3)
    env = {
        "PACSNODE_DICOM_TLS__ENABLED": "true",
        "PACSNODE_DICOM_TLS__PORT": str(tls_port),
        "PACSNODE_DICOM_TLS__CERTIFICATE": str(pki.server.certificate),
        "PACSNODE_DICOM_TLS__KEY": str(pki.server.key),
        "PACSNODE_DICOM_TLS__CA_FILE": str(pki.ca.ca_file),
        "PACSNODE_FSYNC": "0",
    }
    with pacsnode_process(
        tmp_path / "data", dicom_port=dicom_port, http_port=http_port, env=env
    ) as running:
        echoed = dcmtk_tls(
            "echoscu",
            pki,
            pki.modality,
            "-aet",
            "MODALITY1",
            "-aec",
            "PACSNODE",
            HOST,
            str(tls_port),
        )
        assert echoed.returncode == 0, echoed.stderr
        log = running.log_path.read_text()
        assert f"listening for TLS on 127.0.0.1:{tls_port} (client certificates required)" in log
        runner = CliRunner()
        taken = runner.invoke(
            app,
            [
                "serve",
                "--data-dir",
                str(tmp_path / "other"),
                "--dicom-port",
                "0",
                "--http-port",
                "0",
            ],
            env={**env, "PACSNODE_LABELING__MLLP_PORT": "0"},
        )
    assert taken.exit_code == 1
    error = " ".join(taken.stderr.split())
    assert f"the DICOM TLS listener cannot listen on 127.0.0.1:{tls_port}" in error
    assert "PACSNODE_DICOM_TLS__PORT (dicom_tls.port in the config file)" in error
    assert "--port" not in error and "Errno" not in error


def test_serve_says_which_tls_file_cannot_be_used(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.crt"
    result = CliRunner().invoke(
        app,
        ["serve", "--data-dir", str(tmp_path / "data"), "--dicom-port", "0", "--http-port", "0"],
        env={
            "PACSNODE_DICOM_TLS__ENABLED": "true",
            "PACSNODE_DICOM_TLS__PORT": "0",
            "PACSNODE_DICOM_TLS__CERTIFICATE": str(missing),
            "PACSNODE_DICOM_TLS__KEY": str(pki.server.key),
            "PACSNODE_DICOM_TLS__CA_FILE": str(pki.ca.ca_file),
            "PACSNODE_LABELING__MLLP_PORT": "0",
        },
    )
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert f"cannot start the node: dicom_tls.certificate {missing}" in error
    assert "cannot be used: no such file or directory" in error
