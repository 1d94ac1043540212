"""The whole node as a process: ``pacsnode serve`` pushed to by dcmtk and pynetdicom.

One node per module; the crash and shutdown tests start their own.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import create_engine, select

from catalog.models import Instance
from config import load_settings
from deid import Pseudonymizer, load_pseudonymizer
from tests.dicom_bytes import sample
from tests.peers import NodeProcess, dcmtk, free_port, pacsnode_process, storescu
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

pytestmark = pytest.mark.slow


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def stats(data_dir: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "node", "stats", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def stored_instances(data_dir: Path) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (blob key, sha256), read straight from the catalog."""
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        rows = connection.execute(
            select(Instance.sop_instance_uid, Instance.blob_key, Instance.sha256)
        ).all()
    engine.dispose()
    return {uid: (key, sha) for uid, key, sha in rows}


def blob_path(data_dir: Path, key: str) -> Path:
    return data_dir / "blobs" / key[:2] / key[2:4] / f"{key}.dcm"


def dataset_part(raw: bytes) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    meta_length = int(dcmread(BytesIO(raw)).file_meta.FileMetaInformationGroupLength)
    return raw[128 + 4 + 12 + meta_length :]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate(tmp_path_factory.mktemp("synthetic"), SyntheticSpec(patients=4))


def pseudonymizer(data_dir: Path) -> Pseudonymizer:
    """The node's pseudonymizer, from the key it generated in its secrets folder."""
    return load_pseudonymizer(load_settings(data_dir=data_dir), create=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data_dir = tmp_path_factory.mktemp("node") / "data"
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def plain_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with de-identification off: it must store exactly what it receives."""
    data_dir = tmp_path_factory.mktemp("plain") / "data"
    with pacsnode_process(
        data_dir,
        dicom_port=free_port(),
        http_port=free_port(),
        env={"PACSNODE_DEID__ENABLED": "false"},
    ) as running:
        yield running


def test_everything_pushed_with_storescu_is_stored_as_sent_when_deid_is_off(
    plain_node: NodeProcess, dataset: SyntheticDataset
) -> None:
    data_dir = _data_dir(plain_node)
    result = storescu(list(dataset.files), port=plain_node.dicom_port, aet_called="PACSNODE")
    assert result.ok, result.output
    figures = stats(data_dir)
    assert figures["instances"] == len(dataset.files)
    assert figures["patients"] == len(dataset.patients)
    assert figures["bytes"] > 0
    stored = stored_instances(data_dir)
    assert set(stored) == set(dataset.sop_instance_uids)
    for path, uid in zip(dataset.files, dataset.sop_instance_uids, strict=True):
        key, sha = stored[uid]
        blob = blob_path(data_dir, key).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == sha
        assert dataset_part(blob) == dataset_part(path.read_bytes())
    assert "de-identification is DISABLED" in plain_node.log_path.read_text()


def test_everything_pushed_with_storescu_is_stored_deidentified(
    node: NodeProcess, dataset: SyntheticDataset
) -> None:
    data_dir = _data_dir(node)
    result = storescu(list(dataset.files), port=node.dicom_port, aet_called="PACSNODE")
    assert result.ok, result.output
    figures = stats(data_dir)
    assert figures["instances"] == len(dataset.files)
    assert figures["patients"] == len(dataset.patients)
    stored = stored_instances(data_dir)
    pseudo = pseudonymizer(data_dir)
    assert set(stored) == {pseudo.uid(uid) for uid in dataset.sop_instance_uids}
    for path, uid in zip(dataset.files, dataset.sop_instance_uids, strict=True):
        key, sha = stored[pseudo.uid(uid)]
        blob = blob_path(data_dir, key).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == sha
        kept, sent = dcmread(BytesIO(blob)), dcmread(path)
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert kept.PixelData == sent.PixelData
        assert kept.PatientID == pseudo.patient_id(sent.PatientID, sent.IssuerOfPatientID)
        assert kept.SeriesInstanceUID == pseudo.uid(sent.SeriesInstanceUID)


def test_pynetdicom_pushes_and_health_and_metrics_tell(node: NodeProcess) -> None:
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="PACSNODE")
    statuses = [int(assoc.send_c_store(sample(name)).Status) for name in ("MR_small.dcm",) * 2]
    assoc.release()
    assert statuses == [0, 0]
    status, body = http_get(f"{node.url}/healthz")
    assert (status, json.loads(body)["status"]) == (200, "ok")
    _, metrics = http_get(f"{node.url}/metrics")
    assert re.search(r'pacsnode_instances_total\{door="dimse",outcome="duplicate"\} 1\.0', metrics)
    instances = float(re.findall(r"^pacsnode_catalog_instances (\S+)$", metrics, re.M)[0])
    assert instances == stats(_data_dir(node))["instances"]


def _data_dir(node: NodeProcess) -> Path:
    return node.log_path.parent / "data"


def test_restart_keeps_everything(tmp_path: Path, dataset: SyntheticDataset) -> None:
    data_dir = tmp_path / "data"
    ports = {"dicom_port": free_port(), "http_port": free_port()}
    with pacsnode_process(data_dir, **ports) as first:
        assert storescu(list(dataset.files[:20]), port=first.dicom_port, aet_called="PACSNODE").ok
        assert first.terminate() == 0
    before = stored_instances(data_dir)
    with pacsnode_process(data_dir, **ports) as second:
        assert stored_instances(data_dir) == before
        assert stats(data_dir)["instances"] == 20
        assert storescu(list(dataset.files[:25]), port=second.dicom_port, aet_called="PACSNODE").ok
    assert stats(data_dir)["instances"] == 25


def _acknowledged(storescu_output: str, folder: Path) -> list[Path]:
    """Files storescu was told were stored: each 'Sending file' followed by a Success."""
    acked: list[Path] = []
    sending: Path | None = None
    for line in storescu_output.splitlines():
        if match := re.search(r"Sending file: (\S+)", line):
            sending = Path(match.group(1))
        elif "Received Store Response (Success)" in line and sending is not None:
            acked.append(sending)
            sending = None
    assert acked, storescu_output
    assert all(path.parent == folder for path in acked)
    return acked


def _push_in_background(folder: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                dcmtk("storescu"),
                "-v",
                "-aec",
                "PACSNODE",
                "+sd",
                "127.0.0.1",
                str(port),
                str(folder),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )


def _wait_for_instances(node: NodeProcess, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, metrics = http_get(f"{node.url}/metrics")
        found = re.findall(
            r'^pacsnode_instances_total\{door="dimse",outcome="stored"\} (\S+)$', metrics, re.M
        )
        if found and float(found[0]) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} instances arrived in {timeout} s")


def _linked_folder(dataset: SyntheticDataset, folder: Path) -> dict[Path, str]:
    folder.mkdir()
    uids = {}
    for number, (path, uid) in enumerate(
        zip(dataset.files, dataset.sop_instance_uids, strict=True)
    ):
        link = folder / f"{number:05d}.dcm"
        link.symlink_to(path)
        uids[link] = uid
    return uids


def test_kill_9_mid_push_loses_no_acknowledged_instance(
    tmp_path: Path, dataset: SyntheticDataset
) -> None:
    data_dir = tmp_path / "data"
    uids = _linked_folder(dataset, tmp_path / "push")
    ports = {"dicom_port": free_port(), "http_port": free_port()}
    with pacsnode_process(data_dir, **ports) as node:
        pusher = _push_in_background(tmp_path / "push", node.dicom_port, tmp_path / "storescu.log")
        _wait_for_instances(node, at_least=len(uids) // 3)
        node.kill()
        pusher.wait(timeout=60)
    acked = _acknowledged((tmp_path / "storescu.log").read_text(), tmp_path / "push")
    assert 0 < len(acked) < len(uids), "the kill should land mid-push"
    stored = stored_instances(data_dir)
    pseudo = pseudonymizer(data_dir)
    assert {pseudo.uid(uids[path]) for path in acked} <= set(stored)
    for key, sha in stored.values():  # every indexed instance is complete
        assert hashlib.sha256(blob_path(data_dir, key).read_bytes()).hexdigest() == sha
    with pacsnode_process(data_dir, **ports):
        assert stats(data_dir)["instances"] == len(stored)


def test_sigterm_mid_push_lets_the_association_finish(
    tmp_path: Path, dataset: SyntheticDataset
) -> None:
    data_dir = tmp_path / "data"
    uids = _linked_folder(dataset, tmp_path / "push")
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port()) as node:
        pusher = _push_in_background(tmp_path / "push", node.dicom_port, tmp_path / "storescu.log")
        _wait_for_instances(node, at_least=10)
        node.proc.send_signal(signal.SIGTERM)
        assert pusher.wait(timeout=60) == 0
        assert node.proc.wait(timeout=60) == 0
    acked = _acknowledged((tmp_path / "storescu.log").read_text(), tmp_path / "push")
    assert len(acked) == len(uids)
    pseudo = pseudonymizer(data_dir)
    assert set(stored_instances(data_dir)) == {pseudo.uid(uid) for uid in uids.values()}
    log = node.log_path.read_text()
    assert "shutting down" in log and "stopped" in log


def test_port_in_use_and_bad_config_fail_with_a_message(tmp_path: Path) -> None:
    busy = free_port()
    with pacsnode_process(tmp_path / "a", dicom_port=busy, http_port=free_port()):
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "node",
                "serve",
                "--data-dir",
                str(tmp_path / "b"),
                "--dicom-port",
                str(busy),
                "--http-port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 1
    assert "Error: cannot start the node" in second.stderr
    remote = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "serve",
            "--data-dir",
            str(tmp_path / "c"),
            "--http-host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert remote.returncode == 1
    assert "access.methods" in remote.stderr
