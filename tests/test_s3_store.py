"""The S3-compatible blob store (storage/s3.py) against a real S3 endpoint on loopback.

The endpoint is moto's server mode (``moto.server.ThreadedMotoServer``), started by this module
on 127.0.0.1 and a free port: a protocol stand-in for AWS S3 / MinIO / Ceph RGW, spoken to over
HTTP by boto3 exactly as a real one would be. A failure mid-upload is a TCP proxy between the
store and moto that cuts every connection once a number of bytes went through.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import create_engine, select

from catalog.models import Instance, Series, Study
from config import Settings
from config.storage import StorageSettings
from node.app import build_blob_store
from storage import BlobNotFoundError, StorageError
from storage.s3 import S3BlobStore
from tests.dicom_bytes import sample
from tests.peers import free_port, pacsnode_process

HOST = "127.0.0.1"
MIB = 1024 * 1024
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module", autouse=True)
def _credentials() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def endpoint(_credentials: None) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5),
    )


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"blobs-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def test_put_open_stat_keys_remove(endpoint: str, bucket: str) -> None:
    store = S3BlobStore(bucket, client(endpoint), prefix="node-a/")
    store.check()
    data = b"DICM" + os.urandom(1000)
    ref = store.put(data)
    assert re.fullmatch(r"[0-9a-f]{32}", ref.key)
    assert ref.size == len(data)
    with store.open(ref.key) as blob:
        assert blob.read() == data
    assert store.exists(ref.key)
    assert store.stat(ref.key).size == len(data)
    assert list(store.keys()) == [ref.key]
    assert list(store.keys(ref.key[:3])) == [ref.key]
    other = "0" if ref.key[0] != "0" else "1"
    assert list(store.keys(other)) == []
    # the object lives under the prefix
    names = [o["Key"] for o in client(endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert names == [f"node-a/{ref.key}"]

    store.remove(ref.key)
    store.remove(ref.key)  # absent: not an error
    assert not store.exists(ref.key)
    assert list(store.keys()) == []
    with pytest.raises(BlobNotFoundError):
        store.open(ref.key)
    with pytest.raises(BlobNotFoundError):
        store.stat(ref.key)
    with pytest.raises(BlobNotFoundError):
        store.open("../../etc/passwd")


def test_large_blob_takes_the_multipart_path(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    calls: list[str] = []
    s3.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    store = S3BlobStore(bucket, s3, multipart_threshold=1 * MIB)
    data = os.urandom(11 * MIB)
    ref = store.put(data)
    assert "CreateMultipartUpload" in calls
    assert calls.count("UploadPart") == 3  # 5 + 5 + 1 MiB
    assert "CompleteMultipartUpload" in calls
    assert "PutObject" not in calls
    with store.open(ref.key) as blob:
        assert blob.read() == data
    assert list(store.stale_temporaries(0)) == []


def test_put_stream_uploads_chunks_in_parts(endpoint: str, bucket: str) -> None:
    store = S3BlobStore(bucket, client(endpoint), multipart_threshold=5 * MIB)
    chunks = [os.urandom(MIB) for _ in range(12)]
    ref = store.put_stream(iter(chunks))
    data = b"".join(chunks)
    assert (ref.size, ref.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    with store.open(ref.key) as blob:
        assert blob.read() == data


def test_missing_bucket_refuses_to_start(endpoint: str, tmp_path: Path) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        storage=StorageSettings(backend="s3", s3_bucket=missing, s3_endpoint_url=endpoint),
    )
    with pytest.raises(StorageError, match=f"S3 bucket {missing} does not exist"):
        build_blob_store(settings)

    env = {
        **os.environ,
        "PACSNODE_STORAGE__BACKEND": "s3",
        "PACSNODE_STORAGE__S3_BUCKET": missing,
        "PACSNODE_STORAGE__S3_ENDPOINT_URL": endpoint,
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "serve",
            "--data-dir",
            str(tmp_path / "node"),
            "--dicom-port",
            str(free_port()),
            "--http-port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert f"S3 bucket {missing} does not exist" in run.stderr


class CuttingProxy:
    """A TCP proxy to ``target`` that, once ``cut_after`` request bytes went through, closes
    every connection and refuses new ones: an endpoint that fails mid-upload."""

    def __init__(self, target: tuple[str, int], cut_after: int) -> None:
        self.target = target
        self.cut_after = cut_after
        self.sent = 0
        self.broken = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.broken.is_set():
                conn.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [conn, upstream]
            threading.Thread(target=self._pump, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, request: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if request:
                    with self._lock:
                        self.sent += len(chunk)
                        over = self.sent > self.cut_after
                    if over:
                        self.cut()
                        return
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self.broken.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def test_failure_mid_upload_is_a_storage_error_and_leaves_no_blob(
    endpoint: str, bucket: str
) -> None:
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy((host, int(port)), cut_after=7 * MIB)
    try:
        store = S3BlobStore(bucket, client(f"http://{HOST}:{proxy.port}"), multipart_threshold=MIB)
        data = os.urandom(15 * MIB)
        with pytest.raises(StorageError, match=f"cannot write blob in S3 bucket {bucket}") as err:
            store.put(data)
        assert proxy.broken.is_set()
        assert data[:64].hex() not in str(err.value)
    finally:
        proxy.close()
    # nothing half-stored is visible as a blob; the unfinished upload is a temporary
    direct = S3BlobStore(bucket, client(endpoint))
    assert list(direct.keys()) == []
    assert client(endpoint).list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    stale = list(direct.stale_temporaries(0))
    assert len(stale) == 1  # boto3's own abort went to the broken endpoint too
    for name in stale:
        direct.remove_temporary(name)
    assert list(direct.stale_temporaries(0)) == []
    with pytest.raises(BlobNotFoundError):
        direct.remove_temporary("not-ours?uploadId=1")


def test_stopped_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client(url).create_bucket(Bucket="gone")
    store = S3BlobStore("gone", client(url))
    ref = store.put(b"x" * 100)
    server.stop()
    with pytest.raises(StorageError, match="cannot write blob in S3 bucket gone"):
        store.put(b"y" * 100)
    with pytest.raises(StorageError, match=f"cannot read blob {ref.key}"):
        store.open(ref.key)
    with pytest.raises(StorageError):
        store.check()


@pytest.mark.slow
def test_node_on_s3_stores_over_c_store_and_serves_over_wado_rs(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {
        "PACSNODE_STORAGE__BACKEND": "s3",
        "PACSNODE_STORAGE__S3_BUCKET": bucket,
        "PACSNODE_STORAGE__S3_ENDPOINT_URL": endpoint,
        "PACSNODE_STORAGE__S3_REGION": "us-east-1",
        "PACSNODE_STORAGE__S3_PREFIX": "pacs/",
        **CREDENTIALS,
    }
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port(), env=env) as node:
        ae = AE(ae_title="MODALITY")
        ae.requested_contexts = StoragePresentationContexts
        assoc = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(sample())
        finally:
            assoc.release()
        assert status.Status == 0x0000

        assert not (data_dir / "blobs").exists() or not any((data_dir / "blobs").rglob("*.dcm"))
        engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
        with engine.connect() as connection:
            ((study, series, sop, key),) = connection.execute(
                select(
                    Study.study_instance_uid,
                    Series.series_instance_uid,
                    Instance.sop_instance_uid,
                    Instance.blob_key,
                )
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
            ).all()
        engine.dispose()
        stored = client(endpoint).get_object(Bucket=bucket, Key=f"pacs/{key}")["Body"].read()

        answer = httpx.get(
            f"{node.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{node.url}/healthz", timeout=10).json()["storage"] == "ok"
    assert single_part(answer) == stored
    assert stored.startswith(b"\0" * 128 + b"DICM") or b"DICM" in stored[:200]


def single_part(answer: httpx.Response) -> bytes:
    """The body of the one part of a multipart/related answer."""
    boundary = re.search(r'boundary="?([^";]+)"?', answer.headers["content-type"])
    assert boundary is not None
    delimiter = b"--" + boundary.group(1).encode()
    parts = answer.content.split(delimiter)
    assert len(parts) == 3, len(parts)  # preamble, the part, the closing "--"
    _, body = parts[1].split(b"\r\n\r\n", 1)
    return BytesIO(body).read().removesuffix(b"\r\n")


@pytest.mark.slow
def test_healthz_asks_the_bucket(tmp_path: Path) -> None:
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client(url).create_bucket(Bucket="health")
    env = {
        "PACSNODE_STORAGE__BACKEND": "s3",
        "PACSNODE_STORAGE__S3_BUCKET": "health",
        "PACSNODE_STORAGE__S3_ENDPOINT_URL": url,
        **CREDENTIALS,
    }
    try:
        with pacsnode_process(
            tmp_path / "data", dicom_port=free_port(), http_port=free_port(), env=env
        ) as node:
            assert httpx.get(f"{node.url}/healthz", timeout=10).status_code == 200
            server.stop()
            answer = httpx.get(f"{node.url}/healthz", timeout=60)
            assert answer.status_code == 503
            assert answer.json()["status"] == "unavailable"
            assert "cannot reach the blob store in S3 bucket health" in answer.json()["storage"]
    finally:
        server.stop()
