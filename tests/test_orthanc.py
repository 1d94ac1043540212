"""Living beside the hospital's Orthanc, with a real Orthanc 1.10 on loopback:

- the sync job follows its change log and ingests each stable study once, also across a
  crash of the node and with two nodes on one PostgreSQL catalog;
- Orthanc answering 500, timing out or being down mid-study: the run fails with a clear
  result and a log line, nothing partial is counted, the next run completes it;
- ``pacsnode orthanc pull`` by hand;
- Orthanc pushing to pacsnode (``/modalities/{id}/store``), pacsnode sending to an Orthanc
  (C-MOVE by a third party, and ``pacsnode send``).

Failures are injected by :class:`tests.peers.FaultyProxy`, a proxy in front of the real
Orthanc.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from orthanc_api_client import OrthancApiClient
from sqlalchemy import create_engine, func, select, text

from catalog import catalog_stats
from catalog.jobs import RunOutcome
from catalog.models import Change, ChangeType, Instance, JobRun
from catalog.sync import StudySyncStatus, cursor, synced_studies
from config import OrthancSyncSettings, load_settings
from jobs import OrthancSync
from jobs.orthanc import OrthancRefusedError, OrthancUnavailableError
from node.app import Core
from tests.peers import (
    HOST,
    FaultyProxy,
    OrthancPeer,
    dcmtk,
    free_port,
    free_ports,
    orthanc,
    pacsnode_process,
)
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

pytestmark = pytest.mark.slow

STUDIES = 4  # SyntheticSpec(patients=2): a CT and an MR study per patient
INSTANCES = 2 * (10 + 2 * 8)


@dataclass(frozen=True)
class Source:
    """The hospital's Orthanc, holding the synthetic studies; it knows pacsnode as the
    modality ``pacsnode`` at ``node_port`` (a node started on that port receives its
    pushes)."""

    peer: OrthancPeer
    dataset: SyntheticDataset
    node_port: int
    stable_changes: list[int]

    @property
    def url(self) -> str:
        return self.peer.url


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stable_study_changes(url: str) -> list[int]:
    with urllib.request.urlopen(f"{url}/changes?limit=1000", timeout=10) as answer:
        changes = json.loads(answer.read())["Changes"]
    return [c["Seq"] for c in changes if c["ChangeType"] == "StableStudy"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    root = tmp_path_factory.mktemp("orthanc-source")
    dataset = generate(root / "synthetic", SyntheticSpec(patients=2))
    node_port, http_port, dicom_port = free_ports(3)
    with orthanc(
        root,
        http_port=http_port,
        dicom_port=dicom_port,
        modalities={"pacsnode": ("PACSNODE", HOST, node_port)},
        extra_config={"StableAge": 1},
    ) as peer:
        client = OrthancApiClient(peer.url)
        for file in dataset.files:
            client.upload(file.read_bytes())
        client.close()
        wait_for(lambda: len(stable_study_changes(peer.url)) == STUDIES, "stable studies")
        yield Source(peer, dataset, node_port, stable_study_changes(peer.url))


@pytest.fixture
def proxy(source: Source) -> Iterator[FaultyProxy]:
    with FaultyProxy(source.url) as running:
        yield running


def sync_settings(url: str, **overrides: object) -> OrthancSyncSettings:
    return OrthancSyncSettings.model_validate(
        {"url": url, "timeout": 5.0, "retries": 1, "backoff": 0.1, **overrides}
    )


def count_instances(core: Core) -> int:
    return catalog_stats(core.db).instances


# ------------------------------------------------------------------- the sync, in process


def test_sync_fetches_every_stable_study_once(core: Core, source: Source) -> None:
    sync = OrthancSync(sync_settings(source.url), core.db, core.ingestor)
    report = sync.run()
    assert len(report.studies) == STUDIES
    assert all(s.status is StudySyncStatus.SYNCED for s in report.studies)
    assert sum(s.stored for s in report.studies) == INSTANCES
    assert count_instances(core) == INSTANCES
    assert report.cursor >= max(source.stable_changes)
    assert cursor(core.db, source.url) == report.cursor
    again = sync.run()
    assert again.studies == []
    assert count_instances(core) == INSTANCES
    recorded = synced_studies(core.db, source.url)
    assert sorted(r.change_seq for r in recorded) == source.stable_changes
    assert all(r.instances in (10, 16) for r in recorded)
    with core.db.read() as session:
        doors = session.scalars(select(func.distinct(Instance.source_door))).all()
        blob_keys = session.scalars(select(Instance.blob_key)).all()
    assert doors == ["sync"]
    assert_deidentified(core, source.dataset, blob_keys)
    sync.close()


def assert_deidentified(core: Core, dataset: SyntheticDataset, blob_keys: list[str]) -> None:
    """No original identifier of the synthetic patients in the catalog or in a stored file."""
    originals = [
        value
        for phi in dataset.patients
        for value in (phi.patient_id, *phi.accession_numbers, *phi.study_uids)
    ]
    with core.db.read() as session:
        stored = {
            str(value)
            for row in session.execute(
                text(
                    "SELECT p.patient_id, s.accession_number, s.study_instance_uid "
                    "FROM study s JOIN patient p ON s.patient_pk = p.id"
                )
            )
            for value in row
        }
    assert not stored & set(originals)
    for key in blob_keys:
        with core.blobs.open(key) as blob:
            content = blob.read()
        assert not [value for value in originals if value.encode() in content], key


@pytest.mark.parametrize(
    ("inject", "problem"),
    [
        (lambda p: p.fail(r"^/instances/.*/file", 500, after=5), "answered HTTP 500"),
        (lambda p: p.stall(r"^/instances/.*/file", 3.0, after=5), "did not answer within 0.5 s"),
    ],
    ids=["500", "timeout"],
)
def test_orthanc_failing_mid_study_counts_nothing_partial(
    core: Core,
    source: Source,
    proxy: FaultyProxy,
    caplog: pytest.LogCaptureFixture,
    inject: Callable[[FaultyProxy], None],
    problem: str,
) -> None:
    inject(proxy)
    sync = OrthancSync(sync_settings(proxy.url, timeout=0.5), core.db, core.ingestor)
    with (
        caplog.at_level(logging.WARNING, logger="jobs"),
        pytest.raises(OrthancUnavailableError) as failure,
    ):
        sync.run()
    assert problem in str(failure.value)
    assert "(2 attempts)" in str(failure.value)
    assert f"{problem} (attempt 1 of 2); retrying in 0.1 s" in caplog.text
    assert synced_studies(core.db, proxy.url) == []  # the study half fetched is not counted
    assert cursor(core.db, proxy.url) < min(source.stable_changes)
    assert count_instances(core) == 5  # what was stored stays stored

    proxy.heal()
    report = sync.run()
    assert len(report.studies) == STUDIES
    assert sum(s.duplicate for s in report.studies) == 5
    assert sum(s.stored for s in report.studies) == INSTANCES - 5
    assert len(synced_studies(core.db, proxy.url)) == STUDIES
    assert count_instances(core) == INSTANCES
    sync.close()


def test_orthanc_down_is_retried_with_backoff_then_reported(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://{HOST}:{free_port()}"
    sync = OrthancSync(sync_settings(url, retries=2, backoff=0.2), core.db, core.ingestor)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="jobs"),
        pytest.raises(OrthancUnavailableError) as failure,
    ):
        sync.run()
    assert time.monotonic() - started >= 0.2 + 0.4
    assert f"GET /changes: the Orthanc at {url} cannot be reached (3 attempts)" == str(
        failure.value
    )
    assert "retrying in 0.2 s" in caplog.text
    assert "retrying in 0.4 s" in caplog.text
    sync.close()


def test_orthanc_refusing_the_credentials_is_not_retried(core: Core, proxy: FaultyProxy) -> None:
    proxy.fail(".*", 401)
    sync = OrthancSync(sync_settings(proxy.url, retries=3), core.db, core.ingestor)
    with pytest.raises(OrthancRefusedError, match="answered HTTP 401"):
        sync.run()
    assert len(proxy.paths) == 1
    sync.close()


# --------------------------------------------------------------------- pull by hand (CLI)


def pacsnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**dict(__import__("os").environ), **(env or {})},
    )


def test_pull_one_study_by_hand(source: Source, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PACSNODE_ORTHANC_SYNC__URL": source.url}
    original_uid = source.dataset.patients[0].study_uids[1]  # the MR study: 16 instances
    first = pacsnode(
        "orthanc", "pull", "--study", original_uid, "--data-dir", str(data), "--create", env=env
    )
    assert first.returncode == 0, first.stderr
    assert "synced: 16 stored, 0 already there, 0 refused" in first.stdout
    again = pacsnode("orthanc", "pull", "--study", original_uid, "--data-dir", str(data), env=env)
    assert "synced: 0 stored, 16 already there" in again.stdout

    unknown = pacsnode("orthanc", "pull", "--study", "1.2.3.4", "--data-dir", str(data), env=env)
    assert unknown.returncode == 1
    assert f"Error: no such study in the Orthanc at {source.url}" in unknown.stderr
    unset = pacsnode("orthanc", "pull", "--study", original_uid, "--data-dir", str(data))
    assert unset.returncode == 1
    assert "Error: orthanc_sync.url is not set" in unset.stderr
    stats = json.loads(pacsnode("stats", "--data-dir", str(data), "--json").stdout)
    assert stats["instances"] == 16


# ------------------------------------------------------------ the scheduled job in a node


def catalog_engine(data_dir: Path):  # type: ignore[no-untyped-def]
    return create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")


def scalar(engine, sql: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar() or 0)


def test_scheduled_sync_survives_a_crash_and_runs_each_study_once(
    source: Source, proxy: FaultyProxy, tmp_path: Path
) -> None:
    proxy.delay = 0.05  # a slow Orthanc, so that the crash lands mid-sync
    data = tmp_path / "data"
    env = {
        "PACSNODE_ORTHANC_SYNC__ENABLED": "true",
        "PACSNODE_ORTHANC_SYNC__URL": proxy.url,
        "PACSNODE_ORTHANC_SYNC__INTERVAL": "1",
        "PACSNODE_SCHEDULER__LEASE_SECONDS": "5",
        "PACSNODE_FSYNC": "0",
    }
    engine = catalog_engine(data)
    synced = "SELECT count(*) FROM sync_study"
    dicom_port, http_port = free_ports(2)
    with pacsnode_process(data, dicom_port=dicom_port, http_port=http_port, env=env) as node:
        wait_for(lambda: scalar(engine, synced) >= 1, "a first study synced")
        node.kill()
    assert scalar(engine, synced) < STUDIES
    with pacsnode_process(data, dicom_port=dicom_port, http_port=http_port, env=env) as node:
        wait_for(lambda: scalar(engine, synced) == STUDIES, "every study synced", timeout=90)
        listed = pacsnode("jobs", "list", "--data-dir", str(data), "--json")
    assert scalar(engine, "SELECT count(*) FROM instance") == INSTANCES
    assert scalar(engine, "SELECT count(*) FROM instance WHERE version > 1") == 0
    assert scalar(engine, "SELECT count(DISTINCT study_instance_uid) FROM sync_study") == STUDIES
    assert scalar(engine, "SELECT count(*) FROM sync_study WHERE status != 'synced'") == 0
    with engine.connect() as connection:
        replaced = connection.execute(
            select(func.count()).where(Change.change_type == ChangeType.INSTANCE_REPLACED)
        ).scalar()
        outcomes = connection.execute(select(JobRun.outcome).order_by(JobRun.id)).scalars().all()
    engine.dispose()
    assert replaced == 0
    assert outcomes[0] == RunOutcome.ABANDONED  # the run the crash cut short
    assert RunOutcome.SUCCEEDED in outcomes[1:]
    (job,) = json.loads(listed.stdout)
    assert job["id"] == "orthanc_sync"
    assert job["every_seconds"] == 1.0
    assert job["next_run"] is not None
    assert job["result"] in ("succeeded", "running")


STARTED_RUN = re.compile(r"job orthanc_sync started \(run \d+, scheduled (\S+)\)")
STOOD_DOWN = re.compile(
    r"job orthanc_sync \(scheduled (\S+)\) (?:skipped: a run is still in progress|runs on another)"
)


def test_two_nodes_sharing_postgresql_never_run_the_sync_twice(
    source: Source, postgres_url: str, tmp_path: Path
) -> None:
    shared_blobs = tmp_path / "blobs"
    env = {
        "PACSNODE_DATABASE_URL": postgres_url,
        "PACSNODE_BLOB_DIR": str(shared_blobs),
        "PACSNODE_DEID__SECRETS_DIR": str(tmp_path / "secrets"),
        "PACSNODE_ORTHANC_SYNC__ENABLED": "true",
        "PACSNODE_ORTHANC_SYNC__URL": source.url,
        "PACSNODE_ORTHANC_SYNC__INTERVAL": "1",
        "PACSNODE_FSYNC": "0",
    }
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    ports = free_ports(4)
    with (
        pacsnode_process(
            tmp_path / "a", dicom_port=ports[0], http_port=ports[1], env=env, log_path=logs[0]
        ),
        pacsnode_process(
            tmp_path / "b", dicom_port=ports[2], http_port=ports[3], env=env, log_path=logs[1]
        ),
    ):
        started = time.monotonic()
        time.sleep(8)
    elapsed = time.monotonic() - started
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        runs = connection.execute(
            select(JobRun.scheduled_at, JobRun.started_at, JobRun.finished_at, JobRun.node)
            .where(JobRun.job_id == "orthanc_sync")
            .order_by(JobRun.started_at)
        ).all()
        instances = connection.execute(select(func.count()).select_from(Instance)).scalar()
        studies = connection.execute(text("SELECT count(*) FROM sync_study")).scalar()
    engine.dispose()
    assert instances == INSTANCES
    assert studies == STUDIES  # each study fetched once, by one node
    assert len({run.scheduled_at for run in runs}) == len(runs)
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at is not None
        assert earlier.finished_at <= later.started_at  # never two runs at once
    assert len(runs) <= elapsed / 1.0 + 3  # one run per scheduled time, not one per node
    # Both schedulers fired for the same scheduled times: one node ran each, the other
    # stood down (before the run ended: "in progress"; after: "runs on another node").
    ran = [set(STARTED_RUN.findall(log.read_text())) for log in logs]
    stood_down = [set(STOOD_DOWN.findall(log.read_text())) for log in logs]
    assert stood_down[0] & ran[1] or stood_down[1] & ran[0]


# ----------------------------------------------------- Orthanc pushing, pacsnode sending


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    """A second Orthanc that pacsnode sends to (kept apart from the sync's source)."""
    http_port, dicom_port = free_ports(2)
    with orthanc(
        tmp_path_factory.mktemp("orthanc-target"),
        http_port=http_port,
        dicom_port=dicom_port,
        aet="TARGET",
    ) as peer:
        yield peer


def orthanc_get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_orthanc_pushes_to_pacsnode_and_pacsnode_sends_to_orthanc(
    source: Source, target: OrthancPeer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    destinations = [{"ae_title": "TARGET", "host": HOST, "port": target.dicom_port}]
    env = {"PACSNODE_QR__DESTINATIONS": json.dumps(destinations), "PACSNODE_FSYNC": "0"}
    client = OrthancApiClient(source.url)
    study_ids = sorted(client.studies.get_all_ids())
    with pacsnode_process(
        data, dicom_port=source.node_port, http_port=free_port(), env=env
    ) as node:
        answer = client.post(
            "modalities/pacsnode/store",
            json={"Resources": study_ids[:2], "Synchronous": True},
        ).json()
        assert answer["FailedInstancesCount"] == 0
        pushed = sum(len(client.studies.get_instances_ids(s)) for s in study_ids[:2])
        engine = catalog_engine(data)
        assert scalar(engine, "SELECT count(*) FROM instance WHERE source_door = 'dimse'") == pushed
        stored = [
            row[0] for row in engine.connect().execute(text("SELECT study_instance_uid FROM study"))
        ]
        engine.dispose()
        assert len(stored) == 2

        # a third party asks pacsnode to move a study to the target Orthanc
        moved = subprocess.run(
            [
                dcmtk("movescu"),
                "-S",
                "-aec",
                node.ae_title,
                "-aem",
                "TARGET",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={stored[0]}",
                HOST,
                str(node.dicom_port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"TCP_NODELAY": "1"},
        )
        assert moved.returncode == 0, moved.stderr
        # and an operator sends the other one
        sent = pacsnode(
            "send", "--to", "TARGET", "--study", stored[1], "--data-dir", str(data), env=env
        )
        assert sent.returncode == 0, sent.stderr
        assert "failed" in sent.stdout and ", 0 failed)" in sent.stdout
    client.close()
    found = {}
    for study_id in orthanc_get(f"{target.url}/studies"):  # type: ignore[union-attr]
        study = orthanc_get(f"{target.url}/studies/{study_id}")
        uid = study["MainDicomTags"]["StudyInstanceUID"]  # type: ignore[index]
        found[uid] = len(orthanc_get(f"{target.url}/studies/{study_id}/instances"))  # type: ignore[arg-type]
    assert set(found) == set(stored)
    assert sum(found.values()) == pushed


def test_send_to_an_unknown_or_unreachable_destination_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(tmp_path / "syn", SyntheticSpec(patients=1, ct_slices=2, mr_slices=1))
    assert (
        pacsnode("import", str(tmp_path / "syn"), "--data-dir", str(data), "--create").returncode
        == 0
    )
    engine = catalog_engine(data)
    with engine.connect() as connection:
        study = connection.execute(text("SELECT study_instance_uid FROM study")).scalars().first()
    engine.dispose()
    assert study is not None
    env = {
        "PACSNODE_QR__DESTINATIONS": json.dumps(
            [{"ae_title": "GONE", "host": HOST, "port": free_port()}]
        )
    }
    unknown = pacsnode(
        "send", "--to", "ELSEWHERE", "--study", study, "--data-dir", str(data), env=env
    )
    assert unknown.returncode == 1
    assert "Error: 'ELSEWHERE' is not in qr.destinations (configured: GONE)" in unknown.stderr
    down = pacsnode("send", "--to", "GONE", "--study", study, "--data-dir", str(data), env=env)
    assert down.returncode == 1
    assert "Error: nothing sent: GONE" in down.stderr
    assert "could not be reached" in down.stderr
    nothing = pacsnode("send", "--to", "GONE", "--study", "1.2.3", "--data-dir", str(data), env=env)
    assert nothing.returncode == 1
    assert "no stored instance matches" in nothing.stderr


def test_settings_refuse_an_enabled_sync_without_url() -> None:
    with pytest.raises(ValueError, match=r"orthanc_sync\.enabled needs orthanc_sync\.url"):
        load_settings(orthanc_sync={"enabled": True})
    with pytest.raises(ValueError, match="is not an http"):
        load_settings(orthanc_sync={"url": "ftp://orthanc"})
