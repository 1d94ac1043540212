"""The MLLP listener answers only the addresses ``labeling.mllp_allowed_sources`` names."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select

from catalog.models import Report
from config import ConfigError, load_settings
from labeling.mllp import MllpServer
from node.app import Core, build_core
from tests.peers import HOST

MESSAGE = "\r".join(
    [
        "MSH|^~\\&|RIS|HOSP|PACSNODE|LAB|20240305120000||ORU^R01|C9|P|2.5",
        "PID|1||PAT-9^^^HOSP^MR||Doe^Jane||19700101|F",
        "OBR|1||ACC-9^RIS|CT^CT|||20240305101500",
        "OBX|1|TX|IMP^Impression||No focal lesion.||||||F",
    ]
)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    built = build_core(load_settings(data_dir=tmp_path / "data", fsync=False))
    yield built
    built.close()


def serve(core: Core, allowed: list[IPv4Network | IPv6Network]) -> MllpServer:
    server = MllpServer(core.report_intake, HOST, 0, allowed_sources=allowed)
    server.start()
    return server


def reports(core: Core) -> int:
    with core.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Report)) or 0)


def test_a_source_outside_the_allowed_networks_gets_no_answer_and_stores_nothing(
    core: Core,
) -> None:
    server = serve(core, [ip_network("10.20.0.0/16")])
    try:
        with (
            MLLPClient(HOST, server.port) as client,
            pytest.raises((ConnectionError, OSError, socket.timeout)),
        ):
            client.socket.settimeout(5)
            if not client.send_message(MESSAGE):
                raise ConnectionError("closed without an answer")
    finally:
        server.stop()
    assert reports(core) == 0


def test_an_allowed_source_is_answered(core: Core) -> None:
    server = serve(core, [ip_network("10.20.0.0/16"), ip_network("127.0.0.0/8")])
    try:
        with MLLPClient(HOST, server.port) as client:
            answer = client.send_message(MESSAGE)
    finally:
        server.stop()
    assert b"MSA|AA|C9" in answer
    assert reports(core) == 1


def test_allowed_sources_come_from_the_environment_and_bad_ones_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PACSNODE_LABELING__MLLP_ALLOWED_SOURCES", '["10.20.0.0/16", "192.0.2.7"]')
    settings = load_settings(data_dir=tmp_path)
    assert settings.labeling.mllp_allowed_sources == [
        ip_network("10.20.0.0/16"),
        ip_network("192.0.2.7/32"),
    ]
    monkeypatch.setenv("PACSNODE_LABELING__MLLP_ALLOWED_SOURCES", '["10.20.1.2/16"]')
    with pytest.raises(ConfigError, match=r"mllp_allowed_sources"):
        load_settings(data_dir=tmp_path)
