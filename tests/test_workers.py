"""``pacsnode serve --workers 2``: two DICOM worker processes on one port (SO_REUSEPORT) behind
one HTTP server, pushed to by dcmtk's storescu and queried by pynetdicom.

One node per module for ingest, Query/Retrieve, metrics and a worker's restart; the stop test
starts its own.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import create_engine, func, select

from catalog.models import Instance, Series, Study
from tests.peers import HOST, NodeProcess, free_ports, pacsnode_process, storescu
from tests.pki import Authority
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

pytestmark = pytest.mark.slow

WORKERS = 2
MAX_ASSOCIATIONS = 6
CALLERS = ["STORESCU", "WORKSCU", {"ae_title": "LIMITED", "max_associations": 1}]
SPEC = SyntheticSpec(patients=2, ct_slices=6, mr_slices=3, rows=32, columns=32)


def worker_pids(node: NodeProcess) -> set[int]:
    """The node's DICOM workers: its spawned children (not multiprocessing's resource
    tracker, its other child)."""
    pids = set()
    for child in psutil.Process(node.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # gone, or a zombie its parent has not reaped yet
            continue
    return pids


def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def metric(node: NodeProcess, pattern: str) -> float | None:
    _, text = http_get(f"{node.url}/metrics")
    found = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def catalog_counts(data_dir: Path) -> tuple[int, int]:
    """(instance rows, distinct SOP Instance UIDs) in the node's catalog."""
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        rows, distinct = connection.execute(
            select(func.count(), func.count(Instance.sop_instance_uid.distinct()))
        ).one()
    engine.dispose()
    return int(rows), int(distinct)


def a_series(data_dir: Path) -> tuple[str, str, int]:
    """(study UID, series UID, instances) of one stored series."""
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        study, series, count = connection.execute(
            select(Study.study_instance_uid, Series.series_instance_uid, func.count())
            .join(Series, Series.study_pk == Study.id)
            .join(Instance, Instance.series_pk == Series.id)
            .group_by(Study.study_instance_uid, Series.series_instance_uid)
            .limit(1)
        ).one()
    engine.dispose()
    return str(study), str(series), int(count)


@contextmanager
def start_node(root: Path, env: dict[str, str] | None = None) -> Iterator[NodeProcess]:
    dicom_port, http_port = free_ports(2)
    settings = {"PACSNODE_WORKERS": str(WORKERS), "PACSNODE_FSYNC": "0", **(env or {})}
    with pacsnode_process(
        root / "data", dicom_port=dicom_port, http_port=http_port, env=settings
    ) as node:
        wait_for(lambda: len(worker_pids(node)) == WORKERS, "two DICOM workers")
        yield node


@dataclass(frozen=True)
class Running:
    node: NodeProcess
    data_dir: Path
    dataset: SyntheticDataset
    receiver_port: int
    tls_port: int
    ca_file: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("workers")
    dataset = generate(root / "synthetic", SPEC)
    ca = Authority(root / "pki", "hospital")
    server = ca.server()
    (receiver_port,) = free_ports(1)
    destinations = [{"ae_title": "MOVEDEST", "host": HOST, "port": receiver_port}]
    env = {
        "PACSNODE_QR__DESTINATIONS": json.dumps(destinations),
        "PACSNODE_ALLOWED_CALLING_AETS": json.dumps(CALLERS),
        "PACSNODE_MAX_ASSOCIATIONS": str(MAX_ASSOCIATIONS),
        "PACSNODE_DICOM_TLS__ENABLED": "true",
        "PACSNODE_DICOM_TLS__PORT": "0",  # the main process binds first, the workers follow
        "PACSNODE_DICOM_TLS__CERTIFICATE": str(server.certificate),
        "PACSNODE_DICOM_TLS__KEY": str(server.key),
        "PACSNODE_DICOM_TLS__REQUIRE_CLIENT_CERTIFICATE": "false",
    }
    with start_node(root, env) as node:
        result = storescu(
            root / "synthetic", port=node.dicom_port, aet_called=node.ae_title, associations=4
        )
        assert result.ok, result.output
        found = re.findall(r"listening for TLS on 127\.0\.0\.1:(\d+)", node.log_path.read_text())
        assert len(found) == WORKERS and len(set(found)) == 1  # each worker, one port
        yield Running(node, root / "data", dataset, receiver_port, int(found[0]), ca.ca_file)


def collect(into: list[str]) -> Callable[[Event], int]:
    """A C-STORE handler that keeps the SOP Instance UIDs it receives."""

    def on_store(event: Event) -> int:
        into.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    return on_store


def test_every_instance_pushed_over_four_associations_is_stored_once(running: Running) -> None:
    expected = len(running.dataset.files)
    assert catalog_counts(running.data_dir) == (expected, expected)
    status, body = http_get(f"{running.node.url}/dicom-web/instances?limit=1000")
    assert status == 200
    assert len(json.loads(body)) == expected
    assert http_get(f"{running.node.url}/healthz")[0] == 200
    log = running.node.log_path.read_text(errors="replace")
    assert "in 2 worker processes" in log
    # the main process does not accept associations: every one is a worker's
    accepted = [line for line in log.splitlines() if "association accepted" in line]
    assert len(accepted) >= 4
    assert all(" dicom worker " in line for line in accepted)


def test_metrics_count_what_the_workers_stored(running: Running) -> None:
    stored = metric(running.node, r'pacsnode_instances_total\{door="dimse",outcome="stored"\}')
    assert stored == len(running.dataset.files)
    assert metric(running.node, r"pacsnode_catalog_instances") == len(running.dataset.files)


def test_the_system_page_counts_the_workers_memory(running: Running) -> None:
    _, body = http_get(f"{running.node.url}/api/system")
    process = json.loads(body)["memory"]["process"]
    workers = sum(psutil.Process(pid).memory_info().rss for pid in worker_pids(running.node))
    assert process > workers + psutil.Process(running.node.pid).memory_info().rss * 0.5


def test_metrics_count_the_associations_open_in_a_worker(running: Running) -> None:
    ae = AE(ae_title="WORKSCU")
    ae.add_requested_context(Verification)
    held = [ae.associate(HOST, running.node.dicom_port, ae_title=running.node.ae_title)]
    held.append(ae.associate(HOST, running.node.dicom_port, ae_title=running.node.ae_title))
    try:
        assert all(assoc.is_established for assoc in held)
        gauge = r"pacsnode_dimse_active_associations"
        wait_for(lambda: metric(running.node, gauge) == 2.0, "two associations counted", 10)
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: metric(running.node, gauge) == 0.0, "no association counted", 10)


def test_association_limits_count_the_associations_of_every_worker(running: Running) -> None:
    node = running.node
    gauge = r"pacsnode_dimse_active_associations"

    def associations(title: str, count: int) -> list[Association]:
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        return [ae.associate(HOST, node.dicom_port, ae_title=node.ae_title) for _ in range(count)]

    # one process holds about half of them: alone, it would admit the late ones
    held = associations("WORKSCU", MAX_ASSOCIATIONS)
    try:
        assert all(assoc.is_established for assoc in held)
        late = associations("WORKSCU", 4)
        assert not any(assoc.is_established for assoc in late)
        assert all(assoc.is_rejected for assoc in late)
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: metric(node, gauge) == 0.0, "no association counted", 10)

    (first,) = associations("LIMITED", 1)
    try:
        assert first.is_established
        others = associations("LIMITED", 6)  # its max_associations is 1, on any worker
        assert not any(assoc.is_established for assoc in others)
    finally:
        first.release()
    log = node.log_path.read_text(errors="replace")
    assert "no free association slot (max_associations 6)" in log
    assert "calling AE title already has 1 associations open" in log


def test_c_find_c_get_and_c_move_are_answered_by_the_workers(running: Running) -> None:
    study, series, count = a_series(running.data_dir)
    studies = len(
        {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in running.dataset.files}
    )
    for _ in range(4):  # four associations: the kernel spreads them over the workers
        ae = AE(ae_title="WORKSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(HOST, running.node.dicom_port, ae_title=running.node.ae_title)
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        found = [
            ident.StudyInstanceUID
            for status, ident in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            )
            if status.Status in (0xFF00, 0xFF01) and ident is not None
        ]
        assoc.release()
        assert len(found) == len(set(found)) == studies
        assert study in found

    retrieve = Dataset()
    retrieve.QueryRetrieveLevel = "SERIES"
    retrieve.StudyInstanceUID = study
    retrieve.SeriesInstanceUID = series

    got: list[str] = []
    on_store = collect(got)
    ae = AE(ae_title="WORKSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    storage = sorted(
        {str(dcmread(f, stop_before_pixels=True).SOPClassUID) for f in running.dataset.files}
    )
    for uid in storage:
        ae.add_requested_context(uid)
    assoc = ae.associate(
        HOST,
        running.node.dicom_port,
        ae_title=running.node.ae_title,
        ext_neg=[build_role(uid, scp_role=True) for uid in storage],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    final = list(assoc.send_c_get(retrieve, StudyRootQueryRetrieveInformationModelGet))[-1][0]
    assoc.release()
    assert final.Status == 0x0000
    assert len(got) == len(set(got)) == count

    moved: list[str] = []
    receiver = AE(ae_title="MOVEDEST")
    for context in StoragePresentationContexts:
        assert context.abstract_syntax is not None
        receiver.add_supported_context(context.abstract_syntax)
    server = receiver.start_server(
        (HOST, running.receiver_port), block=False, evt_handlers=[(evt.EVT_C_STORE, collect(moved))]
    )
    assert server is not None
    try:
        ae = AE(ae_title="WORKSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(HOST, running.node.dicom_port, ae_title=running.node.ae_title)
        assert assoc.is_established
        statuses = list(
            assoc.send_c_move(retrieve, "MOVEDEST", StudyRootQueryRetrieveInformationModelMove)
        )
        assoc.release()
    finally:
        server.shutdown()
    assert statuses[-1][0].Status == 0x0000
    assert len(moved) == count


def test_the_workers_serve_the_dicom_tls_port(running: Running) -> None:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=running.ca_file)
    ae = AE(ae_title="WORKSCU")
    ae.add_requested_context(Verification)
    for _ in range(4):
        assoc = ae.associate(
            HOST, running.tls_port, ae_title=running.node.ae_title, tls_args=(context, "localhost")
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()


def test_a_killed_worker_is_restarted(running: Running) -> None:
    node = running.node
    before = worker_pids(node)
    victim = min(before)
    psutil.Process(victim).kill()
    wait_for(
        lambda: len(worker_pids(node)) == WORKERS and victim not in worker_pids(node),
        "a new worker in the killed one's place",
    )
    wait_for(lambda: "restarted (pid" in node.log_path.read_text(), "the restart logged")
    log = node.log_path.read_text()
    assert re.search(r"DICOM worker \d \(pid \d+\) exited with status -9", log)
    ae = AE(ae_title="WORKSCU")
    ae.add_requested_context(Verification)
    for _ in range(6):  # both workers answer (a connection may reach either)
        assoc = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()


def test_stop_lets_a_running_store_finish_and_leaves_no_worker(tmp_path: Path) -> None:
    dataset = generate(tmp_path / "synthetic", SyntheticSpec(patients=1, ct_slices=2, mr_slices=1))
    first = dcmread(dataset.files[0])
    with start_node(tmp_path) as node:
        descendants = {c.pid for c in psutil.Process(node.pid).children(recursive=True)}
        assert len(worker_pids(node) & descendants) == WORKERS
        ae = AE(ae_title="WORKSCU")
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        ae.add_requested_context(Verification)
        assoc = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
        assert assoc.is_established
        node.proc.send_signal(signal.SIGTERM)  # the main process only: it stops its workers

        def refused() -> bool:
            late = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
            if late.is_established:
                late.release()
                return False
            return True

        wait_for(refused, "no new association after the stop", 30)
        assert assoc.send_c_store(first).Status == 0x0000  # the running one still stores
        assoc.release()
        assert node.proc.wait(60) == 0
        wait_for(  # the workers and multiprocessing's resource tracker
            lambda: not any(psutil.pid_exists(pid) for pid in descendants), "children gone", 10
        )
        assert catalog_counts(tmp_path / "data") == (1, 1)


@pytest.mark.postgres
def test_workers_share_a_postgresql_catalog(tmp_path: Path, postgres_url: str) -> None:
    dataset = generate(tmp_path / "synthetic", SyntheticSpec(patients=2, ct_slices=4, mr_slices=2))
    with start_node(tmp_path, {"PACSNODE_DATABASE_URL": postgres_url}) as node:
        result = storescu(
            tmp_path / "synthetic", port=node.dicom_port, aet_called=node.ae_title, associations=4
        )
        assert result.ok, result.output
        _, body = http_get(f"{node.url}/dicom-web/instances?limit=1000")
        assert len(json.loads(body)) == len(dataset.files)
        assert metric(node, r"pacsnode_catalog_instances") == len(dataset.files)
