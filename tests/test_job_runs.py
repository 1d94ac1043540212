"""The catalog's side of scheduled jobs and of the sync: run claims and leases, the cursor,
fetched studies, and locating instances to retrieve (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from catalog import Database, RetrieveKeys, locate_keys
from catalog.jobs import (
    Lease,
    RunOutcome,
    claim_run,
    finish_run,
    job_runs,
    last_runs,
    renew_lease,
)
from catalog.models import JobRun, Patient, Study
from catalog.sync import (
    StudySyncStatus,
    SyncedStudyRecord,
    advance_cursor,
    cursor,
    record_study,
    reset_cursor,
    synced_studies,
)
from ingest import Source
from node.app import Core
from tests.synthetic import SyntheticSpec, generate

LEASE = timedelta(seconds=30)
WHEN = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def db(catalog_url: str) -> Database:
    database = Database(catalog_url)
    database.migrate()
    return database


def test_a_scheduled_run_is_claimed_once(db: Database) -> None:
    first = claim_run(db, "sync", WHEN, "node-a", LEASE).run_id
    assert first is not None
    finish_run(db, first, RunOutcome.SUCCEEDED, "done")
    again = claim_run(db, "sync", WHEN, "node-b", LEASE)  # the same scheduled run
    assert again.run_id is None
    assert again.claimed_by == "node-a"
    assert claim_run(db, "sync", WHEN + timedelta(minutes=1), "node-b", LEASE).run_id is not None


def test_no_run_starts_while_another_is_alive(db: Database) -> None:
    running = claim_run(db, "sync", WHEN, "node-a", LEASE).run_id
    assert running is not None
    busy = claim_run(db, "sync", WHEN + timedelta(minutes=1), "node-b", LEASE)
    assert busy.run_id is None
    assert busy.busy_node == "node-a"
    other = claim_run(db, "other-job", WHEN, "node-b", LEASE)  # jobs are separate
    assert other.run_id is not None
    assert renew_lease(db, running)
    finish_run(db, running, RunOutcome.FAILED, "Orthanc down")
    assert claim_run(db, "sync", WHEN + timedelta(minutes=1), "node-b", LEASE).run_id is not None


def test_a_run_whose_node_died_is_abandoned_and_taken_over(db: Database) -> None:
    dead = claim_run(db, "sync", WHEN, "node-a", LEASE).run_id
    assert dead is not None
    with db.write() as session:
        session.execute(
            update(JobRun)
            .where(JobRun.id == dead)
            .values(heartbeat_at=datetime.now(UTC) - 2 * LEASE)
        )
    taken = claim_run(db, "sync", WHEN + timedelta(minutes=1), "node-b", LEASE).run_id
    assert taken is not None
    runs = {run.id: run for run in job_runs(db, "sync")}
    assert runs[dead].outcome is RunOutcome.ABANDONED
    assert "node-a stopped renewing its lease" in runs[dead].summary
    assert not renew_lease(db, dead)  # the dead node's late heartbeat does not revive it
    assert last_runs(db)["sync"].id == taken


def test_concurrent_claims_of_one_scheduled_run_have_one_winner(db: Database) -> None:
    winners: list[int] = []
    start = threading.Barrier(6)

    def claim(node: str) -> None:
        start.wait()
        run = claim_run(db, "sync", WHEN, node, LEASE).run_id
        if run is not None:
            winners.append(run)

    threads = [threading.Thread(target=claim, args=(f"node-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    (only,) = job_runs(db, "sync")
    assert only.scheduled_at == WHEN
    assert only.outcome is RunOutcome.RUNNING


def test_the_cursor_only_moves_forward_and_with_its_study(db: Database) -> None:
    source = "http://orthanc.example:8042"
    assert cursor(db, source) == 0
    record_study(
        db,
        source,
        SyncedStudyRecord(
            change_seq=12,
            study_instance_uid="2.25.1",
            instances=3,
            rejected=0,
            status=StudySyncStatus.SYNCED,
        ),
    )
    assert cursor(db, source) == 12
    advance_cursor(db, source, 7)
    assert cursor(db, source) == 12
    record_study(
        db,
        source,
        SyncedStudyRecord(None, "2.25.2", 1, 0, StudySyncStatus.SYNCED),  # pulled by hand
    )
    assert cursor(db, source) == 12
    advance_cursor(db, source, 40)
    assert cursor(db, source) == 40
    assert cursor(db, "http://another:8042") == 0
    reset_cursor(db, source)
    assert cursor(db, source) == 0
    assert [s.study_instance_uid for s in synced_studies(db, source)] == ["2.25.1", "2.25.2"]


def test_locate_matches_each_level_and_narrows_by_the_levels_above(
    core: Core, tmp_path: Path
) -> None:
    dataset = generate(tmp_path / "syn", SyntheticSpec(patients=2, ct_slices=3, mr_slices=2))
    results = [
        core.ingestor.accept(f.read_bytes(), Source("folder", "test")) for f in dataset.files
    ]
    assert all(r.outcome.success for r in results)
    with core.db.read() as session:  # the stored (de-identified) identifiers
        rows = session.execute(
            select(Study.study_instance_uid, Patient.patient_id).join(
                Patient, Study.patient_pk == Patient.id
            )
        ).all()
    owner = {str(study_uid): str(patient_id) for study_uid, patient_id in rows}
    study = str(results[0].study_instance_uid)
    patient = owner[study]
    of_patient = locate_keys(core.db, RetrieveKeys(patient_ids=(patient,)))
    assert len(of_patient) == 3 + 2 * 2  # one CT study, one MR study of two series
    in_study = locate_keys(core.db, RetrieveKeys(study_uids=(study,)))
    assert [i.sop_instance_uid for i in in_study] == [
        r.sop_instance_uid for r in results if r.study_instance_uid == study
    ]
    assert {i.blob_key for i in in_study} <= {i.blob_key for i in of_patient}
    picked = tuple(i.sop_instance_uid for i in in_study[:2])
    found = locate_keys(core.db, RetrieveKeys(sop_instance_uids=picked))
    assert [i.sop_instance_uid for i in found] == list(picked)
    other_patient = next(p for p in owner.values() if p != patient)
    assert (
        locate_keys(core.db, RetrieveKeys(patient_ids=(other_patient,), study_uids=(study,))) == []
    )
    with pytest.raises(ValueError, match="at least one unique key"):
        RetrieveKeys()


def test_a_lease_is_held_by_one_node_and_handed_over(db: Database) -> None:
    """The audit forwarder's lease: one holder; a stopping holder hands it over at once, a
    dead one (no renewal for the lease's length) loses it to the next node that asks."""
    lease = timedelta(seconds=1)
    a = Lease(db, "audit_forward", lease, node="node-a")
    b = Lease(db, "audit_forward", lease, node="node-b")
    assert a.hold()
    assert not b.hold()
    a.release("node stopped")
    assert not a.held
    time.sleep(0.3)  # past b's next check (lease / 4)
    assert b.hold()
    time.sleep(1.2)  # b dies: it renews no more
    assert a.hold()
    time.sleep(0.3)
    assert not b.hold()  # its late renewal finds its run abandoned, and a alive
    outcomes = [run.outcome for run in reversed(job_runs(db, "audit_forward"))]
    assert outcomes == [RunOutcome.SUCCEEDED, RunOutcome.ABANDONED, RunOutcome.RUNNING]
