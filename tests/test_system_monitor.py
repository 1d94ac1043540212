"""The monitor's rules and queries on both catalogs (SQLite and PostgreSQL), the catalog
unreachable, and a webhook that never answers."""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from catalog import Database
from catalog.jobs import RunOutcome, claim_run, finish_run
from catalog.quarantine import quarantine_summary
from config import Settings, load_settings
from ingest import Outcome, Source
from node.alerts import AlertKind, Alerts, Finding, Webhook
from node.app import build_core
from node.metrics import NodeMetrics
from node.monitor import SystemMonitor
from tests.dicom_bytes import part10, sample


def monitor(settings: Settings, db: Database) -> SystemMonitor:
    metrics = NodeMetrics()
    return SystemMonitor(settings, db, metrics, Alerts(metrics, None, "test"), lambda: 0)


def record_runs(db: Database, job: str, outcomes: list[RunOutcome]) -> None:
    first = datetime(2025, 1, 1, tzinfo=UTC)
    for number, outcome in enumerate(outcomes):
        claim = claim_run(db, job, first + timedelta(hours=number), "test", timedelta(minutes=1))
        assert claim.run_id is not None
        finish_run(db, claim.run_id, outcome, "")


def ultrasound() -> bytes:
    ds = sample()
    ds.Modality = "US"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return part10(ds)


def test_failing_jobs_and_the_quarantine_on_both_catalogs(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "deid": settings.deid.model_copy(update={"burned_in_policy": "quarantine"}),
            "alerts": settings.alerts.model_copy(update={"job_failures": 2, "disk_percent": 100}),
        }
    )
    core = build_core(settings)
    try:
        failed, interrupted = RunOutcome.FAILED, RunOutcome.INTERRUPTED
        record_runs(core.db, "sync", [RunOutcome.SUCCEEDED, failed, interrupted, failed])
        record_runs(core.db, "scrub", [failed, failed, RunOutcome.SUCCEEDED])
        record_runs(core.db, "backup", [RunOutcome.ABANDONED, failed, failed, failed])
        watching = monitor(settings, core.db)

        # interrupted runs (the node was stopped) neither count nor end a streak
        assert watching.failing_jobs() == {"sync": 2, "scrub": 0, "backup": 2}
        findings = watching.findings()
        assert [(f.kind, f.subject) for f in findings] == [
            (AlertKind.JOB_FAILING, "backup"),
            (AlertKind.JOB_FAILING, "sync"),
        ]

        held = [core.ingestor.accept(ultrasound(), Source("folder", "test")) for _ in range(3)]
        assert all(r.outcome is Outcome.STORED and r.quarantined for r in held)
        count, newest = quarantine_summary(core.db, 2)
        assert count == 3
        assert [h.sop_instance_uid for h in newest] == [r.sop_instance_uid for r in held[:0:-1]]
    finally:
        core.close()


def test_an_unreachable_catalog_raises_its_alert(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://pacsnode@127.0.0.1:{port}/absent?connect_timeout=2"
    settings = load_settings(data_dir=tmp_path, database_url=url, alerts={"disk_percent": 100})
    db = Database(url)
    try:
        watching = monitor(settings, db)
        findings = watching.findings()
        assert [f.kind for f in findings] == [AlertKind.CATALOG]
        assert "catalog unavailable" in findings[0].message
        watching.alerts.update(findings)
        state = watching.snapshot()
        assert state["jobs"] is None  # unknown while the catalog is away
        assert [alert["kind"] for alert in state["alerts"]] == ["catalog_unreachable"]
    finally:
        db.dispose()


def test_a_webhook_that_never_answers_never_holds_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="node.alerts")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook?key=secret-in-url"
        settings = load_settings(alerts={"webhook_url": url, "webhook_timeout": 0.5})
        webhook = Webhook(settings.alerts)
        metrics = NodeMetrics()
        alerts = Alerts(metrics, webhook, "test")
        started = time.monotonic()
        alerts.update([Finding(AlertKind.DISK, "disk full")])
        alerts.update([])
        assert time.monotonic() - started < 0.2
        webhook.close(timeout=5)
    assert "alert webhook unreachable (ReadTimeout)" in caplog.messages
    assert caplog.messages[:2] == ["alert started: disk full", "alert ended: disk full"]
    assert "secret-in-url" not in caplog.text
