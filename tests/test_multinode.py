"""Two node processes sharing one PostgreSQL catalog, one blob store (a shared folder, then an
S3 bucket on moto's server, a protocol stand-in started here) and one secrets folder, as
docs/deployment.md sets them up behind a load balancer:

- an instance stored through node A is found through node B at once (QIDO-RS, C-FIND) and
  retrieved through B (WADO-RS, C-GET), byte for byte as A serves it; a STOW-RS to B is
  found and retrieved through A;
- the same original patient sent to A and to B gets one pseudonym and lands in one study
  (the pseudonyms are computed here from the shared HMAC key); a third node given other
  secrets than the archive's refuses to start;
- the guide's haproxy config, in front of both, spreads associations over them and passes
  HTTPS on with the X-Forwarded-* headers the nodes believe (the URLs they answer are the
  proxy's);
- both nodes forward the audit trail to one syslog collector, which gets every event once,
  also when the forwarding node stops and the other takes over, and also an event whose
  transaction commits after a later one's.

That each scheduled job run runs on one node only is tested with the Orthanc sync in
tests/test_orthanc.py (``test_two_nodes_sharing_postgresql_never_run_the_sync_twice``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, timedelta
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import Engine, create_engine, text

from audit.forward import LEASE_NAME, AuditForwarder
from audit.syslog import SyslogSender
from catalog import Database
from catalog.audit import record_audit
from config.audit import SyslogSettings
from deid import Pseudonymizer, load_secrets
from deid.secrets import VAULT_KEY_FILE
from tests.conftest import new_postgres_database
from tests.dicom_bytes import part10, sample
from tests.peers import (
    HOST,
    REPO_ROOT,
    NodeProcess,
    free_ports,
    haproxy,
    pacsnode_process,
    storescu,
)
from tests.pki import Authority
from tests.test_audit_syslog import HEADER, Collector, body
from tests.test_deployment import HAPROXY_PEM, blocks, haproxy_pem
from tests.test_orthanc import scalar, wait_for
from tests.test_s3_store import CREDENTIALS, client, single_part

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DICOM_PART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Cluster:
    a: NodeProcess
    b: NodeProcess
    catalog: Engine
    pseudonyms: Pseudonymizer
    collector: Collector
    audit_id_before: int
    """The newest audit event once the nodes were up and the trail forwarded."""
    logs: list[Path]
    env: dict[str, str]
    """What both nodes were started with (catalog, blob store, secrets, audit)."""
    kind: str
    """The blob store: ``folder`` or ``s3``."""


def forwarded_all(engine: Engine) -> bool:
    """The forward cursor has reached the newest audit event."""
    newest = scalar(engine, "SELECT max(id) FROM audit_event")
    return scalar(engine, "SELECT last_id FROM audit_forward_cursor") == newest


@contextlib.contextmanager
def blob_store(kind: str, root: Path) -> Iterator[dict[str, str]]:
    """The environment giving both nodes one blob store of ``kind``."""
    if kind == "folder":
        yield {"PACSNODE_BLOB_DIR": str(root / "shared-blobs")}
        return
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client(endpoint).create_bucket(Bucket="archive")
        yield {
            "PACSNODE_STORAGE__BACKEND": "s3",
            "PACSNODE_STORAGE__S3_BUCKET": "archive",
            "PACSNODE_STORAGE__S3_ENDPOINT_URL": endpoint,
            "PACSNODE_STORAGE__S3_REGION": "us-east-1",
            **CREDENTIALS,
        }
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module", params=["folder", "s3"])
def cluster(
    request: pytest.FixtureRequest,
    postgres_admin_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Nodes A and B, started at the same moment on an empty catalog and an empty secrets
    folder (one migrates while the other waits; both end up with the same keys)."""
    root = tmp_path_factory.mktemp(f"multinode-{request.param}")
    pki = Authority(root / "pki", "audit")
    collector = Collector(pki.server())
    with contextlib.ExitStack() as stack:
        stack.callback(collector.stop)
        url = stack.enter_context(new_postgres_database(postgres_admin_url))
        env = {
            "PACSNODE_DATABASE_URL": url,
            "PACSNODE_DEID__SECRETS_DIR": str(root / "shared-secrets"),
            "PACSNODE_FSYNC": "0",
            "PACSNODE_SCHEDULER__LEASE_SECONDS": "5",
            "PACSNODE_AUDIT__SYSLOG__HOST": HOST,
            "PACSNODE_AUDIT__SYSLOG__PORT": str(collector.port),
            "PACSNODE_AUDIT__SYSLOG__CAFILE": str(pki.ca_file),
            **stack.enter_context(blob_store(request.param, root)),
        }
        ports = free_ports(4)
        logs = [root / "a.log", root / "b.log"]
        starting = [
            pacsnode_process(
                root / name,
                dicom_port=ports[2 * n],
                http_port=ports[2 * n + 1],
                env=env,
                log_path=logs[n],
            )
            for n, name in enumerate(("a", "b"))
        ]
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(node.__enter__) for node in starting]
        for node, future in zip(starting, started, strict=True):
            if future.exception() is None:
                stack.push(node.__exit__)
        a, b = (future.result() for future in started)
        catalog = create_engine(url)
        stack.callback(catalog.dispose)
        wait_for(lambda: forwarded_all(catalog), "the audit trail forwarded")
        secrets = load_secrets(root / "shared-secrets", create=False)
        yield Cluster(
            a=a,
            b=b,
            catalog=catalog,
            pseudonyms=Pseudonymizer(secrets.hmac_key),
            collector=collector,
            audit_id_before=scalar(catalog, "SELECT max(id) FROM audit_event"),
            logs=logs,
            env=env,
            kind=request.param,
        )


@dataclass(frozen=True)
class Original:
    """An instance as the modality has it (with its patient data), and its file."""

    dataset: Dataset
    file: Path

    @property
    def study(self) -> str:
        return str(self.dataset.StudyInstanceUID)


def original(folder: Path, patient_id: str, study: str | None = None) -> Original:
    ds = sample("CT_small.dcm")
    ds.PatientID = patient_id
    ds.PatientName = f"Doe^{patient_id}"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{ds.SOPInstanceUID}.dcm"
    file.write_bytes(part10(ds))
    return Original(ds, file)


def store_through(node: NodeProcess, instance: Original) -> None:
    """C-STORE with dcmtk's storescu, as a modality would."""
    sent = storescu(instance.file, port=node.dicom_port, aet_called=node.ae_title, timeout=60)
    assert sent.ok, sent.output


def stow_through(node: NodeProcess, instance: Original) -> None:
    boundary = "multinode-boundary"
    payload = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + instance.file.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = httpx.post(
        f"{node.url}/dicom-web/studies",
        content=payload,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text


def qido_study(node: NodeProcess, study: str) -> list[dict[str, dict[str, list[object]]]]:
    answer = httpx.get(
        f"{node.url}/dicom-web/studies",
        params={"StudyInstanceUID": study, "includefield": "00201208"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    found: list[dict[str, dict[str, list[object]]]] = answer.json()
    return found


def wado_instance(node: NodeProcess, study: str, series: str, sop: str) -> bytes:
    answer = httpx.get(
        f"{node.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": DICOM_PART},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return single_part(answer)


def c_find_studies(node: NodeProcess, study: str) -> list[Dataset]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    query.PatientID = ""
    query.NumberOfStudyRelatedInstances = ""
    assoc = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        found = [
            identifier
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            )
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None
        ]
    finally:
        assoc.release()
    return found


def c_get_study(node: NodeProcess, study: str) -> dict[str, bytes]:
    """The instances of ``study`` sent back on a C-GET association, by SOP Instance UID."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    received: dict[str, bytes] = {}

    def on_store(event: Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
        return 0x0000

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assoc = ae.associate(
        HOST,
        node.dicom_port,
        ae_title=node.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        statuses = [
            status
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses and int(statuses[-1].Status) == 0x0000
    return received


def test_stored_through_a_is_found_and_retrieved_through_b(
    cluster: Cluster, tmp_path: Path
) -> None:
    sent = original(tmp_path, "MULTI-A-1")
    store_through(cluster.a, sent)
    # at once: no wait, no cache to refresh
    study = cluster.pseudonyms.uid(sent.study)
    series = cluster.pseudonyms.uid(str(sent.dataset.SeriesInstanceUID))
    sop = cluster.pseudonyms.uid(str(sent.dataset.SOPInstanceUID))
    [found] = qido_study(cluster.b, study)
    assert found["00100020"]["Value"] == [cluster.pseudonyms.patient_id("MULTI-A-1")]
    [matched] = c_find_studies(cluster.b, study)
    assert matched.PatientID == cluster.pseudonyms.patient_id("MULTI-A-1")

    through_b = wado_instance(cluster.b, study, series, sop)
    assert through_b == wado_instance(cluster.a, study, series, sop)
    retrieved = c_get_study(cluster.b, study)
    assert list(retrieved) == [sop]
    got = dcmread(BytesIO(retrieved[sop]), force=True)
    assert got.PatientID == cluster.pseudonyms.patient_id("MULTI-A-1")
    assert got.PixelData == sent.dataset.PixelData


def test_stow_to_b_is_found_and_retrieved_through_a(cluster: Cluster, tmp_path: Path) -> None:
    sent = original(tmp_path, "MULTI-B-1")
    stow_through(cluster.b, sent)
    study = cluster.pseudonyms.uid(sent.study)
    [found] = qido_study(cluster.a, study)
    assert found["00100020"]["Value"] == [cluster.pseudonyms.patient_id("MULTI-B-1")]
    assert [m.StudyInstanceUID for m in c_find_studies(cluster.a, study)] == [study]
    series = cluster.pseudonyms.uid(str(sent.dataset.SeriesInstanceUID))
    sop = cluster.pseudonyms.uid(str(sent.dataset.SOPInstanceUID))
    stored = dcmread(BytesIO(wado_instance(cluster.a, study, series, sop)))
    assert stored.SOPInstanceUID == sop
    assert stored.PixelData == sent.dataset.PixelData


def test_one_patient_sent_to_both_nodes_gets_one_pseudonym_and_one_study(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = original(tmp_path / "a", "MULTI-SAME")
    second = original(tmp_path / "b", "MULTI-SAME", study=first.study)
    store_through(cluster.a, first)
    stow_through(cluster.b, second)
    study = cluster.pseudonyms.uid(first.study)
    pseudonym = cluster.pseudonyms.patient_id("MULTI-SAME")
    for node in (cluster.a, cluster.b):
        [found] = qido_study(node, study)
        assert found["00100020"]["Value"] == [pseudonym]
        assert found["00201208"]["Value"] == [2]
    patients = scalar(
        cluster.catalog, f"SELECT count(*) FROM patient WHERE patient_id = '{pseudonym}'"
    )
    assert patients == 1
    for log in cluster.logs:  # the original identifiers reach no log
        assert "MULTI-SAME" not in log.read_text()
        assert first.study not in log.read_text()


def test_a_node_given_other_secrets_refuses_to_start(cluster: Cluster, tmp_path: Path) -> None:
    """An empty secrets folder (the node would make new keys) or another HMAC key beside the
    right vault key (one case per blob store, to save a node start): either would split the
    archive into pseudonyms that meet nothing."""
    store_through(cluster.a, original(tmp_path / "sent", "MULTI-KEYS"))
    secrets = tmp_path / "secrets"
    if cluster.kind == "folder":
        reason = "does not decrypt with this node's vault key"
    else:
        secrets.mkdir(mode=0o700)
        shared = Path(cluster.env["PACSNODE_DEID__SECRETS_DIR"])
        shutil.copy2(shared / VAULT_KEY_FILE, secrets / VAULT_KEY_FILE)
        reason = "made with another HMAC key"
    dicom_port, http_port = free_ports(2)
    started = subprocess.run(
        [
            *(sys.executable, "-m", "node", "serve", "--data-dir", str(tmp_path / "c")),
            *("--dicom-port", str(dicom_port), "--http-port", str(http_port)),
        ],
        env={**os.environ, **cluster.env, "PACSNODE_DEID__SECRETS_DIR": str(secrets)},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 1, started.stderr
    assert "cannot start the node" in started.stderr
    assert f"the secrets in {secrets} are not this archive's" in started.stderr
    assert reason in started.stderr
    assert "MULTI-KEYS" not in started.stderr


def metric(node: NodeProcess, line_start: str) -> float:
    text_ = httpx.get(f"{node.url}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1]) for line in text_.splitlines() if line.startswith(line_start)
    )


def test_the_guides_haproxy_spreads_associations_and_passes_https_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    [config] = blocks("haproxy")
    dicom_port, https_port = free_ports(2)
    authority = Authority(tmp_path / "pki", "lb")
    for before, after in (
        (":11112\n", f"{HOST}:{dicom_port}\n"),
        (":443 ", f"{HOST}:{https_port} "),
        (HAPROXY_PEM, str(haproxy_pem(authority))),
        *(
            (
                f"{address}:11112 check port 8042",
                f"{HOST}:{node.dicom_port} check port {node.http_port}",
            )
            for address, node in (("10.0.0.11", cluster.a), ("10.0.0.12", cluster.b))
        ),
        *(
            (f"{address}:8042 ", f"{HOST}:{node.http_port} ")
            for address, node in (("10.0.0.11", cluster.a), ("10.0.0.12", cluster.b))
        ),
    ):
        assert before in config, before
        config = config.replace(before, after)
    stored = 'pacsnode_instances_total{door="dimse",outcome="stored"}'
    counts = [metric(node, stored) for node in (cluster.a, cluster.b)]
    sent = [original(tmp_path / str(n), f"MULTI-LB-{n}") for n in range(4)]
    with haproxy(config, tmp_path / "haproxy", ready_port=dicom_port):
        for instance in sent:  # one association each
            result = storescu(instance.file, port=dicom_port, aet_called="PACSNODE", timeout=60)
            assert result.ok, result.output
        study = cluster.pseudonyms.uid(sent[0].study)
        through = httpx.get(
            f"https://{HOST}:{https_port}/dicom-web/studies",
            params={"StudyInstanceUID": study},
            verify=ssl.create_default_context(cafile=authority.ca_file),
            timeout=30,
        )
    spread = [
        metric(node, stored) - count
        for node, count in zip((cluster.a, cluster.b), counts, strict=True)
    ]
    assert sum(spread) == len(sent)
    assert min(spread) >= 1  # leastconn: round robin among nodes equally loaded
    assert through.status_code == 200, through.text
    [found] = through.json()
    assert found["00081190"]["Value"] == [f"https://{HOST}:{https_port}/dicom-web/studies/{study}"]


def holder(cluster: Cluster) -> NodeProcess:
    """The node holding the audit forwarding lease (its run record names its pid)."""
    [node] = _rows(
        cluster.catalog,
        "SELECT node FROM job_run WHERE job_id = :job AND outcome = 'running'",
        job=LEASE_NAME,
    )
    pid = int(str(node).rsplit(":", 1)[1])
    return next(n for n in (cluster.a, cluster.b) if n.pid == pid)


def events_since(cluster: Cluster) -> Counter[str]:
    """The syslog timestamps of the events recorded since the nodes started."""
    times = _rows(
        cluster.catalog,
        "SELECT at FROM audit_event WHERE id > :id",
        id=cluster.audit_id_before,
    )
    return Counter(
        at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[attr-defined]
        for at in times
    )


def received(cluster: Cluster, expected: Counter[str]) -> Counter[str]:
    """How often the collector got a message of each of those events (matched by time)."""
    stamps = (HEADER.match(frame) for frame in cluster.collector.frames)
    return Counter(
        stamp for match in stamps if match and (stamp := match["timestamp"].decode()) in expected
    )


def each_received_once(cluster: Cluster) -> None:
    """Wait until the collector has every event since the nodes started once (an event a
    node aggregates is written when its window closes, up to 10 s later), then make sure
    that nothing arrives twice: a second node sending would do it within its poll."""

    def once() -> bool:
        expected = events_since(cluster)
        return received(cluster, expected) == expected

    wait_for(once, "every event at the collector, once")
    time.sleep(1.5)
    expected = events_since(cluster)
    assert max(received(cluster, expected).values()) == 1
    wait_for(once, "every event at the collector, once")


def test_both_nodes_forward_the_audit_trail_each_event_once(cluster: Cluster) -> None:
    """Every event since the nodes started (queries here, and the requests of the tests
    above, on both nodes) reached the collector once; then the forwarding node stops, the
    other takes over, and the events that follow arrive once too. Without the lease both
    nodes would send each."""
    first = holder(cluster)
    other = cluster.b if first is cluster.a else cluster.a
    for _ in range(3):  # events on both nodes, each query one
        assert qido_study(first, "1.2.3.4") == []
        assert qido_study(other, "1.2.3.4") == []
    each_received_once(cluster)
    assert sum(events_since(cluster).values()) >= 6

    first.terminate()
    for _ in range(3):
        assert qido_study(other, "1.2.3.4") == []
    each_received_once(cluster)
    assert holder(cluster) is other
    outcomes = _rows(
        cluster.catalog,
        "SELECT outcome FROM job_run WHERE job_id = :job ORDER BY id",
        job=LEASE_NAME,
    )
    assert outcomes == ["succeeded", "running"]


def _rows(engine: Engine, sql: str, **params: object) -> list[object]:
    with engine.connect() as connection:
        return list(connection.execute(text(sql), params).scalars())


def test_an_event_committed_after_a_later_one_is_forwarded_not_passed_by(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two nodes' transactions commit in any order: the forwarder must not move its cursor
    past an id that is still to come (in process, with a real collector)."""
    db = Database(postgres_url)
    db.migrate()
    pki = Authority(tmp_path, "audit")
    collector = Collector(pki.server())
    settings = SyslogSettings.model_validate(
        {"host": HOST, "port": collector.port, "cafile": pki.ca_file}
    )
    forwarder = AuditForwarder(
        db,
        SyslogSender(settings, "node"),
        lambda event: f"<event target='{event.target}'/>".encode(),
        queue_size=100,
        lease=timedelta(seconds=5),
        poll=0.05,
    )
    forwarder.start()
    try:
        wait_for(lambda: forwarder.lease.held, "the forwarding lease")
        time.sleep(0.2)  # the cursor is placed
        with db.write() as slow:
            record_audit(slow, "node a", "query", "first")  # its id is taken, not committed
            with db.write() as quick:
                record_audit(quick, "node b", "query", "second")
            time.sleep(0.5)  # polls that see "second" and not "first"
            assert collector.frames == []
        frames = collector.wait_for(2, timeout=10)
    finally:
        forwarder.close(1)
        collector.stop()
        db.dispose()
    assert [body(frame) for frame in frames] == [
        b"<event target='first'/>",
        b"<event target='second'/>",
    ]
