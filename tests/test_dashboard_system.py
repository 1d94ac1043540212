"""The System page and its alerts, on a real node: ``GET /api/system`` against the catalog and
the node's counters, each alert rule raising an alert that shows in the API, on the page
(headless Chromium), in ``/metrics``, in the log and at a webhook receiver on loopback.

One node per module; its disk threshold is set below the data folder's current use, so the
disk alert is in effect from the first evaluation on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import httpx
import psutil
import pytest
from playwright.sync_api import Browser
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from access.credentials import Credentials
from catalog.jobs import RunOutcome, claim_run, finish_run
from catalog.models import QuarantinedInstance
from config import load_settings
from config.access import DEFAULT_ROLES
from node.app import Node
from tests.browser import ARTIFACTS
from tests.dicom_bytes import sample
from tests.test_access_matrix import c_store
from tests.test_dashboard_pages import PASSWORD, logged_in, open_logged_in

TOKEN = "webhook-secret-token"

STORED = 4  # CT instances sent by C-STORE, plus one ultrasound the quarantine holds


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback: every POSTed JSON document, with its headers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str]] = []
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def documents(self, **matching: str) -> list[dict[str, Any]]:
        return [
            doc
            for doc, _ in list(self.received)
            if all(doc.get(key) == value for key, value in matching.items())
        ]


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((json.loads(body), self.headers.get("Authorization", "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def log_records() -> Iterator[Records]:
    logger = logging.getLogger("node.alerts")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, log_records: Records
) -> Iterator[Node]:
    data = tmp_path_factory.mktemp("system") / "data"
    data.mkdir()
    used = psutil.disk_usage(str(data)).percent
    running = Node(
        load_settings(
            data_dir=data,
            fsync=False,
            dicom_port=0,
            http_port=0,
            deid={"burned_in_policy": "quarantine"},
            access={
                "methods": ["password"],
                "roles": {**DEFAULT_ROLES, "operator": ["system.read"]},
            },
            alerts={
                "interval": 0.2,
                "disk_percent": max(used - 1, 0),
                "job_failures": 3,
                "ingest_errors_per_minute": 10,  # over 6 s: more than one error
                "ingest_window": 6,
                "webhook_url": receiver.url,
                "webhook_token": TOKEN,
            },
        )
    )
    running.start()
    credentials = Credentials(running.core.db, running.settings.access)
    credentials.add_user("admin", PASSWORD, ["admin"], None, actor="test")
    credentials.add_user("reader", PASSWORD, ["viewer"], None, actor="test")
    credentials.add_user("operator", PASSWORD, ["operator"], ["A"], actor="test")
    try:
        yield running
    finally:
        running.stop()


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``check()``'s first true answer, asked until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (answer := check()):
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.1)
    return answer


_sessions: dict[tuple[int, str], httpx.Client] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _sessions:
        _sessions.popitem()[1].close()


def session(node: Node, user: str = "admin") -> httpx.Client:
    """A client logged in as ``user`` (one per user and node: a login costs an argon2 hash)."""
    key = (node.http_port, user)
    if key not in _sessions:
        _sessions[key] = logged_in(node, user)
    return _sessions[key]


def system(node: Node, user: str = "admin") -> dict[str, Any]:
    answer = session(node, user).get("/api/system")
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def alerts_of(state: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [alert for alert in state["alerts"] if alert["kind"] == kind]


def ct(number: int) -> Dataset:
    ds = sample()
    ds.AccessionNumber = f"SYS-{number}"
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def test_the_numbers_are_the_counters_and_the_catalogs(node: Node) -> None:
    ultrasound = ct(99)
    ultrasound.Modality = "US"  # held back by deid.burned_in_policy = quarantine
    c_store(node, [*[ct(n) for n in range(STORED)], ultrasound], "MODALITY")

    state = system(node)

    assert state["ingest"]["since_start"] == {"accepted": STORED + 1, "rejected": 0, "failed": 0}
    assert state["ingest"]["window"]["accepted"] == STORED + 1
    assert state["ingest"]["per_minute"]["accepted"] == round((STORED + 1) / (6 / 60), 2)
    with node.core.db.read() as reading:
        held = reading.scalar(select(func.count()).select_from(QuarantinedInstance))
    assert state["quarantine"]["count"] == held == 1
    assert state["quarantine"]["newest"][0]["modality"] == "US"
    disk = psutil.disk_usage(str(node.settings.data_dir))
    assert state["disk"]["total"] == disk.total
    assert abs(state["disk"]["free"] - disk.free) < 64 * 2**20
    assert state["memory"]["total"] == psutil.virtual_memory().total
    assert state["associations"] == {"active": 0, "max": node.settings.max_associations}
    assert 0 <= state["cpu"]["percent"] <= 100
    node.core.audit.flush()  # store events are aggregated for a while
    assert "store" in {event["action"] for event in system(node)["audit"]}
    history = eventually(lambda: system(node)["ingest"]["history"])
    assert {"at", "accepted", "rejected", "failed", "cpu_percent"} <= set(history[-1])


def test_the_disk_alert_is_everywhere(node: Node, receiver: Receiver, log_records: Records) -> None:
    alert = eventually(lambda: alerts_of(system(node), "disk"))[0]
    assert alert["values"]["threshold"] == node.settings.alerts.disk_percent
    assert alert["values"]["percent"] > alert["values"]["threshold"]
    metrics = session(node).get("/metrics").text
    assert 'pacsnode_alerts_active{kind="disk"} 1.0' in metrics
    assert 'pacsnode_alerts_raised_total{kind="disk"} 1.0' in metrics
    assert 'pacsnode_alerts_active{kind="catalog_unreachable"} 0.0' in metrics
    started = [m for m in log_records.messages if m.startswith("alert started: the data folder")]
    assert len(started) == 1  # once, however many evaluations found it since
    document = eventually(lambda: receiver.documents(kind="disk", status="firing"))[0]
    assert document["since"] == alert["since"]
    assert document["values"]["threshold"] == alert["values"]["threshold"]
    assert document["node"].startswith(node.settings.ae_title)
    assert all(auth == f"Bearer {TOKEN}" for _, auth in receiver.received)
    assert TOKEN not in " ".join(log_records.messages)


def test_a_job_failing_in_a_row_raises_its_alert_until_it_succeeds(
    node: Node, receiver: Receiver, log_records: Records
) -> None:
    db, lease = node.core.db, timedelta(minutes=1)
    first = datetime(2025, 1, 1, tzinfo=UTC)

    def run(number: int, outcome: RunOutcome) -> None:
        claim = claim_run(db, "nightly_copy", first + timedelta(hours=number), "test", lease)
        assert claim.run_id is not None
        finish_run(db, claim.run_id, outcome, "copy target unreachable")

    for number in range(2):
        run(number, RunOutcome.FAILED)
    time.sleep(4 * node.settings.alerts.interval)
    assert not alerts_of(system(node), "job_failing")  # two are not yet "repeatedly"
    run(2, RunOutcome.FAILED)

    alert = eventually(lambda: alerts_of(system(node), "job_failing"))[0]
    assert alert["subject"] == "nightly_copy" and alert["values"]["count"] == 3
    jobs = {job["id"]: job for job in system(node)["jobs"]}
    assert jobs["nightly_copy"]["failures_in_a_row"] == 3
    assert jobs["nightly_copy"]["last_run"]["outcome"] == "failed"
    assert eventually(lambda: receiver.documents(kind="job_failing", status="firing"))

    run(3, RunOutcome.SUCCEEDED)
    eventually(lambda: not alerts_of(system(node), "job_failing"))
    assert eventually(lambda: receiver.documents(kind="job_failing", status="resolved"))
    job_lines = [m for m in log_records.messages if "job nightly_copy" in m]
    assert job_lines == [
        "alert started: job nightly_copy failed 3 times in a row",
        "alert ended: job nightly_copy failed 3 times in a row",
    ]


def test_refused_instances_above_the_rate_raise_an_alert(node: Node, receiver: Receiver) -> None:
    boundary = uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nnot DICOM {n}\r\n".encode()
        for n in range(2)
    )
    base = f"http://127.0.0.1:{node.http_port}"
    session(node).post(
        "/dicom-web/studies",
        content=body + f"--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Origin": base,
        },
    )
    state = eventually(lambda: alerts_of(system(node), "ingest_errors") and system(node))
    assert state["ingest"]["since_start"]["rejected"] == 2
    assert alerts_of(state, "ingest_errors")[0]["values"]["count"] == 2
    assert eventually(lambda: receiver.documents(kind="ingest_errors", status="firing"))


def test_who_sees_what(node: Node) -> None:
    assert session(node, "reader").get("/api/system").status_code == 403
    scoped = system(node, "operator")  # system.read, project A only
    assert "quarantine" not in scoped and "audit" not in scoped
    assert scoped["disk"] and "alerts" in scoped


def test_the_page_draws_its_charts_and_the_alert(browser: Browser, node: Node) -> None:
    eventually(lambda: alerts_of(system(node), "disk"))
    page, errors = open_logged_in(browser, node, "/system?lang=en")
    page.wait_for_selector(".alert[data-kind=disk]")
    page.wait_for_selector("#quarantine td")
    page.wait_for_function(
        """() => ['ingest-chart', 'disk-chart'].every(id => {
             const canvas = document.querySelector(`#${id} canvas`);
             if (!canvas || !canvas.width) return false;
             const pixels = canvas.getContext('2d')
               .getImageData(0, 0, canvas.width, canvas.height).data;
             return pixels.some(value => value !== 0);
           })"""
    )
    assert "disk" in page.inner_text(".alert[data-kind=disk]").lower()
    assert page.inner_text("[data-card=accepted] .value") != ""
    assert page.locator("#audit tbody tr").count() > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-system-alerts.png", full_page=True)
    page.goto(page.url.replace("lang=en", "lang=zh"))
    page.wait_for_selector(".alert[data-kind=disk]")
    assert "磁盘" in page.inner_text(".alert[data-kind=disk]")
    page.screenshot(path=ARTIFACTS / "dashboard-system-zh.png", full_page=True)
    page.context.close()
    assert errors == []
