"""HTTPS on the HTTP port: certificate and key from config (a password from a file or the
environment, never logged), HTTPS only on that port, the certificate reloaded on SIGHUP by a
real ``pacsnode serve`` (a bad new file keeps the old one); re-identification refused over
plain HTTP when HTTPS is configured, also behind a TLS-terminating proxy; the session cookie
``Secure`` under HTTPS and behind a trusted proxy.

Certificates are made in the test (``cryptography``); clients verify them against the test
CA.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.data import get_testdata_file

from access.credentials import Credentials
from config import ConfigError, load_settings
from ingest import Source
from node.app import Node
from node.https import CertificateError, ServerCertificate
from tests.peers import free_ports, pacsnode_process

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"  # a test key's password


# ------------------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost it signed."""

    ca: Path
    cert: Path
    key: Path
    fingerprint: str  # sha256 of the server certificate (DER), hex

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_pki(folder: Path, name: str, password: str | None = None) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} node")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    pki = Pki(
        ca=folder / "ca.crt",
        cert=folder / "server.crt",
        key=folder / "server.key",
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return pki


def served_fingerprint(port: int) -> str:
    """sha256 of the certificate the port presents to a new handshake (not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@contextlib.contextmanager
def running(folder: Path, **settings: Any) -> Iterator[Node]:
    node = Node(
        load_settings(data_dir=folder / "data", fsync=False, dicom_port=0, http_port=0, **settings)
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


# ------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("https", "dicomweb", "complaint"),
    [
        ({"certfile": "server.crt"}, {}, "set together"),
        ({"certfile": "a.crt", "keyfile": "a.key", "behind_proxy": True}, {}, "behind_proxy"),
        ({"behind_proxy": True}, {"trust_forwarded_headers": False}, "trust_forwarded_headers"),
        ({"keyfile_password": "x", "keyfile_password_file": "p"}, {}, "not both"),
        ({"trusted_proxies": ["proxy.example.org"]}, {}, "not an IP address"),
        ({"csp_report_uri": "javascript:alert(1)"}, {}, "csp_report_uri"),
        ({"csp_report_uri": "/r; script-src *"}, {}, "csp_report_uri"),
    ],
)
def test_https_settings_are_checked(
    tmp_path: Path, https: dict[str, Any], dicomweb: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(data_dir=tmp_path, https=https, dicomweb=dicomweb)


# ------------------------------------------------------------------------- key and password


def test_an_encrypted_key_opens_with_a_password_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path, "locked", password=PASSWORD)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    files = {"certfile": str(pki.cert), "keyfile": str(pki.key)}
    from_file = load_settings(
        data_dir=tmp_path, https={**files, "keyfile_password_file": str(password_file)}
    )
    certificate = ServerCertificate(from_file.https)
    assert certificate.info.sha256.replace(":", "") == pki.fingerprint

    monkeypatch.setenv("PACSNODE_HTTPS__KEYFILE_PASSWORD", PASSWORD)
    from_env = load_settings(data_dir=tmp_path, https=files)
    assert PASSWORD not in repr(from_env) and PASSWORD not in str(from_env.model_dump())
    with caplog.at_level(logging.DEBUG):
        assert ServerCertificate(from_env.https).reload()
    monkeypatch.setenv("PACSNODE_HTTPS__KEYFILE_PASSWORD", "wrong " + PASSWORD)
    with caplog.at_level(logging.DEBUG), pytest.raises(CertificateError) as refused:
        ServerCertificate(load_settings(data_dir=tmp_path, https=files).https)
    assert str(pki.key) in str(refused.value) and "password is wrong" in str(refused.value)
    monkeypatch.delenv("PACSNODE_HTTPS__KEYFILE_PASSWORD")
    with pytest.raises(CertificateError, match="encrypted and no password"):
        ServerCertificate(load_settings(data_dir=tmp_path, https=files).https)
    assert caplog.records  # the reload was logged, without the password
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)
    assert PASSWORD not in str(refused.value)


def test_unusable_files_stop_the_start_with_the_reason(tmp_path: Path) -> None:
    first, second = make_pki(tmp_path / "a", "a"), make_pki(tmp_path / "b", "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (first.cert, second.key, "does not match the certificate"),
        (garbage, first.key, "holds no PEM certificate"),
        (first.cert, garbage, "holds no PEM private key"),
        (tmp_path / "missing.crt", first.key, "cannot read"),
    ]
    for cert, key, reason in cases:
        settings = load_settings(
            data_dir=tmp_path / "data", https={"certfile": str(cert), "keyfile": str(key)}
        )
        with pytest.raises(CertificateError, match=reason):
            Node(settings)


# ------------------------------------------------------------------------- a node on HTTPS


@dataclass(frozen=True)
class TlsNode:
    node: Node
    pki: Pki
    admin: str  # an API token of the admin role

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.node.http_port}"


def admin_token(node: Node) -> str:
    credentials = Credentials(node.core.db, node.settings.access)
    return credentials.create_token("admin", ["admin"], None, created_by="test")


def stored_patient_id(client: httpx.Client, base: str, headers: dict[str, str]) -> str:
    """The (pseudonymous) Patient ID of the one study stored."""
    studies = client.get(f"{base}/dicom-web/studies", headers=headers).json()
    return str(studies[0]["00100020"]["Value"][0])


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    folder = tmp_path_factory.mktemp("tls")
    pki = make_pki(folder / "pki", "tls")
    with running(
        folder,
        access={"methods": ["token"]},
        https={"certfile": str(pki.cert), "keyfile": str(pki.key)},
    ) as node:
        raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        assert node.core.ingestor.accept(raw, Source(door="folder", remote="test")).outcome.success
        yield TlsNode(node, pki, admin_token(node))


def test_the_http_port_serves_https_only(tls_node: TlsNode) -> None:
    answer = httpx.get(f"{tls_node.url}/healthz", verify=tls_node.pki.client(), timeout=10)
    assert answer.status_code == 200
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
    assert served_fingerprint(tls_node.node.http_port) == tls_node.pki.fingerprint
    with pytest.raises(httpx.TransportError):  # no plain HTTP beside it
        httpx.get(f"http://127.0.0.1:{tls_node.node.http_port}/healthz", timeout=10)


def test_reidentification_needs_https(tls_node: TlsNode) -> None:
    """Over the node's HTTPS it answers; when a trusted proxy in front of the node says
    its client came over plain HTTP, it refuses (403, with the reason)."""
    headers = {"Authorization": f"Bearer {tls_node.admin}"}
    with httpx.Client(verify=tls_node.pki.client(), headers=headers, timeout=30) as client:
        pseudonym = stored_patient_id(client, tls_node.url, headers)
        url = f"{tls_node.url}/api/admin/reidentify/patient/{pseudonym}?reason=follow-up"
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        assert answer.json()["originals"]["patient_id"] == "1CT1"
        refused = client.get(url, headers={"X-Forwarded-Proto": "http"})
        assert refused.status_code == 403
        assert "HTTPS" in refused.json()["detail"]
        assert "1CT1" not in refused.text


# ------------------------------------------------------------------------- behind a proxy


def test_behind_a_tls_terminating_proxy(tmp_path: Path) -> None:
    """The node serves plain HTTP to its proxy; X-Forwarded-Proto of a trusted proxy tells
    it whether the client came over HTTPS: re-identification, HSTS and the cookie follow."""
    with running(
        tmp_path, access={"methods": ["token", "password"]}, https={"behind_proxy": True}
    ) as node:
        raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        assert node.core.ingestor.accept(raw, Source(door="folder", remote="test")).outcome.success
        Credentials(node.core.db, node.settings.access).add_user(
            "alice", PASSWORD, ["viewer"], None, actor="test"
        )
        base = f"http://127.0.0.1:{node.http_port}"
        auth = {"Authorization": f"Bearer {admin_token(node)}"}
        proxied = {**auth, "X-Forwarded-Proto": "https"}
        with httpx.Client(timeout=30) as client:
            pseudonym = stored_patient_id(client, base, auth)
            url = f"{base}/api/admin/reidentify/patient/{pseudonym}?reason=follow-up"
            direct = client.get(url, headers=auth)
            assert direct.status_code == 403 and "HTTPS" in direct.json()["detail"]
            assert "strict-transport-security" not in direct.headers
            answer = client.get(url, headers=proxied)
            assert answer.status_code == 200
            assert answer.headers["strict-transport-security"] == "max-age=31536000"

            form = {"username": "alice", "password": PASSWORD}
            login = client.post(f"{base}/login", data=form)  # HTTPS is configured: Secure
            assert login.status_code == 303
            assert "secure" in login.headers["set-cookie"].lower().split("; ")


def test_forwarded_proto_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    """A caller that is not a trusted proxy cannot claim HTTPS with a header."""
    with running(
        tmp_path,
        access={"methods": ["token"]},
        https={"behind_proxy": True, "trusted_proxies": ["192.0.2.10"]},
    ) as node:
        base = f"http://127.0.0.1:{node.http_port}"
        headers = {"Authorization": f"Bearer {admin_token(node)}", "X-Forwarded-Proto": "https"}
        answer = httpx.get(
            f"{base}/api/admin/reidentify/patient/PX?reason=follow-up", headers=headers
        )
        assert answer.status_code == 403
        assert "strict-transport-security" not in answer.headers


def test_the_session_cookie_is_secure_over_https_through_a_trusted_proxy(tmp_path: Path) -> None:
    """No HTTPS configured: the cookie is Secure when the request came over HTTPS, which a
    trusted proxy's X-Forwarded-Proto says."""
    with running(tmp_path, access={"methods": ["password"]}) as node:
        Credentials(node.core.db, node.settings.access).add_user(
            "alice", PASSWORD, ["viewer"], None, actor="test"
        )
        form = {"username": "alice", "password": PASSWORD}
        login = f"http://127.0.0.1:{node.http_port}/login"
        plain = httpx.post(login, data=form, timeout=30)
        proxied = httpx.post(login, data=form, headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert plain.status_code == proxied.status_code == 303
    assert "secure" not in plain.headers["set-cookie"].lower().split("; ")
    assert "secure" in proxied.headers["set-cookie"].lower().split("; ")


# ------------------------------------------------------------------------- SIGHUP


def _wait_for(condition: Any, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one(tmp_path: Path) -> None:
    """A real ``pacsnode serve`` whose encrypted key's password is in its environment."""
    first = make_pki(tmp_path / "first", "first", password=PASSWORD)
    second = make_pki(tmp_path / "second", "second", password=PASSWORD)
    third = make_pki(tmp_path / "third", "third", password=PASSWORD)
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.crt", live / "server.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    dicom_port, http_port = free_ports(2)
    env = {
        "PACSNODE_HTTPS__CERTFILE": str(cert),
        "PACSNODE_HTTPS__KEYFILE": str(key),
        "PACSNODE_HTTPS__KEYFILE_PASSWORD": PASSWORD,
        "PACSNODE_FSYNC": "false",
    }
    with pacsnode_process(
        tmp_path / "data", dicom_port=dicom_port, http_port=http_port, env=env, tls=first.client()
    ) as node:
        assert served_fingerprint(http_port) == first.fingerprint

        shutil.copy(second.cert, cert)
        shutil.copy(second.key, key)
        os.kill(node.pid, signal.SIGHUP)
        assert _wait_for(lambda: served_fingerprint(http_port) == second.fingerprint)
        with httpx.Client(verify=second.client(), timeout=10) as client:
            assert client.get(f"{node.url}/healthz").status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{node.url}/healthz", verify=first.client(), timeout=10)

        shutil.copy(third.key, key)  # a key that is not the certificate's
        os.kill(node.pid, signal.SIGHUP)
        assert _wait_for(lambda: "not reloaded" in node.log_path.read_text())
        assert "does not match the certificate" in node.log_path.read_text()
        assert served_fingerprint(http_port) == second.fingerprint  # the old one stays
        with httpx.Client(verify=second.client(), timeout=10) as client:
            assert client.get(f"{node.url}/healthz").status_code == 200
        assert node.terminate() == 0
    log = node.log_path.read_text()
    assert "HTTPS certificate reloaded" in log
    assert PASSWORD not in log
