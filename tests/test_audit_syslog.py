"""Audit messages to a syslog collector over TLS (RFC 5424 in RFC 5425 frames), against a
collector the test runs on 127.0.0.1: headers and bodies intact, an untrusted collector gets
nothing, a restarted one gets what follows, a mutual-TLS one gets the client certificate."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from audit.syslog import SyslogSender, severity_for
from config.audit import SyslogSettings
from tests.pki import Authority, KeyPair

HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+)"
    rb" (?P<msgid>\S+) - \xef\xbb\xbf"
)


class Collector:
    """A syslog-over-TLS collector: accepts connections, splits octet-counted frames."""

    def __init__(self, server: KeyPair, *, client_ca: Path | None = None, port: int = 0) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(server.certificate, server.key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen()
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.frames: list[bytes] = []
        self.handshakes_failed = 0
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._connections: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def wait_for(self, count: int, timeout: float = 3.0) -> list[bytes]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.frames) >= count, timeout)
            return list(self.frames)

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        for thread in self._threads:
            thread.join(2)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(2)
        try:
            connection = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            self.handshakes_failed += 1
            raw.close()
            return
        self._connections.append(connection)
        buffer = b""
        with connection:
            while not self._stopped.is_set():
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while (match := re.match(rb"([1-9][0-9]*) ", buffer)) and len(buffer) >= (
                    end := match.end() + int(match.group(1))
                ):
                    with self._changed:
                        self.frames.append(buffer[match.end() : end])
                        self._changed.notify_all()
                    buffer = buffer[end:]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"), "audit")


@pytest.fixture
def collector(pki: Authority) -> Iterator[Collector]:
    server = Collector(pki.server())
    yield server
    server.stop()


def sender_for(port: int, ca: Path, **settings: object) -> SyslogSender:
    config = SyslogSettings.model_validate(
        {"host": "127.0.0.1", "port": port, "cafile": ca, "app_name": "pacsnode"} | settings
    )
    return SyslogSender(config, "pacs.example.org", min_backoff=0.05, max_backoff=0.2, timeout=2)


def body(frame: bytes) -> bytes:
    match = HEADER.match(frame)
    assert match is not None, frame[:120]
    return frame[match.end() :]


def test_messages_arrive_as_rfc5424_in_octet_counted_frames(
    collector: Collector, pki: Authority
) -> None:
    sender = sender_for(collector.port, pki.ca_file)
    at = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
    messages = [
        b'<?xml version="1.0"?><AuditMessage n="1"/>',
        "<AuditMessage name='Müller, 山田 – ✓'/>".encode(),
        b"<AuditMessage>" + b"x" * 40_000 + b"</AuditMessage>",
    ]
    try:
        sender.send(messages[0], at, severity_for("ok"))
        sender.send(messages[1], at, severity_for("refused"))
        sender.send(messages[2], datetime(2026, 3, 1, 12, 30), severity_for("failed"))
        frames = collector.wait_for(3)
    finally:
        sender.close(1)
    assert len(frames) == 3
    for frame, message in zip(frames, messages, strict=True):
        match = HEADER.match(frame)
        assert match is not None
        assert match["hostname"] == b"pacs.example.org"
        assert match["app"] == b"pacsnode"
        assert match["procid"].isdigit()
        assert match["msgid"] == b"IHE+RFC-3881"
        assert datetime.fromisoformat(match["timestamp"].decode()).tzinfo is not None
        assert body(frame) == message
    assert [HEADER.match(f)["pri"] for f in frames] == [b"85", b"84", b"84"]  # type: ignore[index]
    assert HEADER.match(frames[0])["timestamp"] == b"2026-03-01T12:30:45.123456Z"  # type: ignore[index]
    assert body(frames[1]).decode("utf-8") == "<AuditMessage name='Müller, 山田 – ✓'/>"
    stats = sender.stats()
    assert (stats.sent, stats.dropped, stats.queued) == (3, 0, 0)


def test_an_untrusted_collector_gets_nothing_and_the_queue_keeps_the_newest(
    pki: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rogue = Authority(tmp_path / "rogue", "rogue")
    server = Collector(rogue.server())
    sender = sender_for(server.port, pki.ca_file, queue_size=2)
    caplog.set_level(logging.DEBUG, logger="pacsnode.audit")
    try:
        for n in range(5):
            sender.send(f"<AuditMessage secret='{n}'/>".encode(), datetime.now(UTC))
        deadline = time.monotonic() + 3
        while server.handshakes_failed < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.handshakes_failed >= 2  # it tried, and tries again
        stats = sender.stats()
        assert not stats.connected
        assert stats.sent == 0
        assert stats.queued + stats.dropped == 5
        assert stats.queued <= 2
        assert server.frames == []
    finally:
        sender.close(0.2)
        server.stop()
    assert any("cannot connect" in r.getMessage() for r in caplog.records)
    assert not any(
        "secret" in r.getMessage() or "AuditMessage" in r.getMessage() for r in caplog.records
    )


def test_a_restarted_collector_gets_what_follows(pki: Authority) -> None:
    server_pair = pki.server("restart")
    first = Collector(server_pair)
    port = first.port
    sender = sender_for(port, pki.ca_file)
    second: Collector | None = None
    try:
        sender.send(b"<AuditMessage n='1'/>", datetime.now(UTC))
        assert [body(f) for f in first.wait_for(1)] == [b"<AuditMessage n='1'/>"]
        first.stop()
        sender.send(b"<AuditMessage n='2'/>", datetime.now(UTC))  # while nobody listens
        time.sleep(0.1)
        second = Collector(server_pair, port=port)
        sender.send(b"<AuditMessage n='3'/>", datetime.now(UTC))
        frames = second.wait_for(2)
        assert [body(f) for f in frames] == [b"<AuditMessage n='2'/>", b"<AuditMessage n='3'/>"]
        assert sender.stats().connected
    finally:
        sender.close(1)
        first.stop()
        if second is not None:
            second.stop()


def test_a_mutual_tls_collector_gets_the_client_certificate(pki: Authority, tmp_path: Path) -> None:
    server = Collector(pki.server("mtls"), client_ca=pki.ca_file)
    client = pki.client("pacsnode")
    key = serialization.load_pem_private_key(client.key.read_bytes(), password=None)
    encrypted = tmp_path / "client-encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret pass"),
        )
    )
    without = sender_for(server.port, pki.ca_file)
    sender = sender_for(
        server.port,
        pki.ca_file,
        certfile=client.certificate,
        keyfile=encrypted,
        keyfile_password="s3cret pass",
    )
    try:
        without.send(b"<AuditMessage who='anonymous'/>", datetime.now(UTC))
        sender.send(b"<AuditMessage who='pacsnode'/>", datetime.now(UTC))
        frames = server.wait_for(1)
        time.sleep(0.2)
        assert [body(f) for f in server.frames] == [b"<AuditMessage who='pacsnode'/>"]
        assert frames
    finally:
        sender.close(1)
        without.close(0.1)
        server.stop()


def test_a_wrong_key_password_fails_at_construction(pki: Authority, tmp_path: Path) -> None:
    client = pki.client("wrong")
    key = serialization.load_pem_private_key(client.key.read_bytes(), password=None)
    encrypted = tmp_path / "k.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
    )
    with pytest.raises(ssl.SSLError):
        sender_for(
            1, pki.ca_file, certfile=client.certificate, keyfile=encrypted, keyfile_password="wrong"
        )


def test_send_after_close_is_counted_not_raised(pki: Authority) -> None:
    sender = sender_for(1, pki.ca_file)  # nothing listens on port 1
    sender.send(b"<AuditMessage/>", datetime.now(UTC))
    sender.close(0.1)
    sender.send(b"<AuditMessage/>", datetime.now(UTC))
    stats = sender.stats()
    assert stats.sent == 0
    assert stats.dropped >= 1


def test_a_node_forwards_its_whole_trail_and_misses_nothing_while_the_collector_is_away(
    pki: Authority, tmp_path: Path
) -> None:
    """Events of the node's doors and of another process (a command writing to the same
    catalog) reach the collector as schema-valid audit messages; events recorded while the
    collector is away wait in the catalog and arrive once it is back."""
    from lxml import etree

    from catalog.audit import record_audit
    from config import load_settings
    from node.app import Node
    from tests.test_audit_xml import SCHEMA

    collector = Collector(pki.server())
    node = Node(
        load_settings(
            data_dir=tmp_path / "data",
            fsync=False,
            dicom_port=0,
            http_port=0,
            audit={"syslog": {"host": "127.0.0.1", "port": collector.port, "cafile": pki.ca_file}},
        )
    )
    node.start()
    try:
        import httpx

        assert httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies").is_success
        node.core.audit.flush()  # the query's event first: it is written from a queue
        with node.core.db.write() as session:  # as `pacsnode reidentify` would, elsewhere
            record_audit(session, "cli admin@host", "reidentify", "patient:P1", "not_found")
        frames = collector.wait_for(2, timeout=10)
        messages = [etree.fromstring(body(frame)) for frame in frames]
        for message in messages:
            SCHEMA.assertValid(message)
        assert [m.find("EventIdentification/EventID").get("csd-code") for m in messages] == [
            "110112",  # Query
            "110110",  # Patient Record
        ]
        collector.stop()
        with node.core.db.write() as session:
            for number in range(3):
                record_audit(session, "cli admin@host", "reidentify", f"patient:P{number}", "found")
        time.sleep(1.5)  # the forwarder tries, the collector is away
        collector = Collector(pki.server(), port=collector.port)
        later = collector.wait_for(3, timeout=30)
        targets = [
            etree.fromstring(body(frame))
            .find("ParticipantObjectIdentification")
            .get("ParticipantObjectID")
            for frame in later
        ]
        assert targets == ["P0", "P1", "P2"]
    finally:
        node.stop()
        collector.stop()
