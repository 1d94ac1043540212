"""Alerts: conditions of the node someone should act on, raised and ended by
:class:`node.monitor.SystemMonitor`'s rules.

Each alert is logged once when it starts and once when it ends, counted in ``/metrics``
(``pacsnode_alerts_active`` by kind, ``pacsnode_alerts_raised_total``), shown on the System
page (``GET /api/system``), and POSTed as JSON to ``alerts.webhook_url`` by a thread of its
own, so a slow or absent receiver never holds the node up.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from config.alerts import AlertSettings
from node.metrics import NodeMetrics

log = logging.getLogger(__name__)


class AlertKind(enum.StrEnum):
    DISK = "disk"
    """The data folder's filesystem is fuller than ``alerts.disk_percent``."""
    JOB_FAILING = "job_failing"
    """A scheduled job failed ``alerts.job_failures`` times in a row."""
    INGEST_ERRORS = "ingest_errors"
    """Instances are refused or fail faster than ``alerts.ingest_errors_per_minute``."""
    CATALOG = "catalog_unreachable"
    """The catalog database does not answer."""


@dataclass(frozen=True)
class Finding:
    """What a rule found this time: ``subject`` tells alerts of one kind apart (a job's id);
    ``values`` fill the page's sentence for the kind (``system.alert.<kind>``)."""

    kind: AlertKind
    message: str
    subject: str = ""
    values: dict[str, str | float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.subject}" if self.subject else self.kind.value


@dataclass(frozen=True)
class Alert:
    """An alert in effect since ``since``, as the rules last found it."""

    finding: Finding
    since: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.finding.kind.value,
            "subject": self.finding.subject,
            "message": self.finding.message,
            "values": self.finding.values,
            "since": self.since.isoformat(),
        }


class Alerts:
    """The alerts in effect; :meth:`update` with every finding of one evaluation starts the
    new ones and ends those no rule found any more."""

    def __init__(self, metrics: NodeMetrics, webhook: Webhook | None, node: str) -> None:
        self._metrics = metrics
        self._webhook = webhook
        self._node = node
        self._active: dict[str, Alert] = {}
        self._lock = threading.Lock()
        for kind in AlertKind:  # every kind shows in /metrics, at 0 until it happens
            metrics.alerts_active.labels(kind=kind.value).set(0)
            metrics.alerts_raised.labels(kind=kind.value)

    def update(self, findings: Iterable[Finding]) -> None:
        now = datetime.now(UTC)
        found = {finding.key: finding for finding in findings}
        with self._lock:
            started = [Alert(f, now) for key, f in found.items() if key not in self._active]
            ended = [alert for key, alert in self._active.items() if key not in found]
            self._active = {
                key: Alert(finding, self._active[key].since if key in self._active else now)
                for key, finding in found.items()
            }
            for kind in AlertKind:
                count = sum(1 for alert in self._active.values() if alert.finding.kind is kind)
                self._metrics.alerts_active.labels(kind=kind.value).set(count)
        for alert in started:
            log.warning("alert started: %s", alert.finding.message)
            self._metrics.alerts_raised.labels(kind=alert.finding.kind.value).inc()
            self._send("firing", alert, now)
        for alert in ended:
            log.info("alert ended: %s", alert.finding.message)
            self._send("resolved", alert, now)

    def active(self) -> list[Alert]:
        """The alerts in effect, oldest first."""
        with self._lock:
            return sorted(self._active.values(), key=lambda alert: alert.since)

    def _send(self, status: str, alert: Alert, now: datetime) -> None:
        if self._webhook is not None:
            self._webhook.send(
                {"status": status, "node": self._node, "at": now.isoformat(), **alert.to_json()}
            )


class Webhook:
    """POSTs JSON documents to a URL, one after the other, from a thread of its own; a
    document that cannot be delivered within the timeout is logged (without the URL, which
    may hold a secret) and dropped."""

    def __init__(self, settings: AlertSettings, queue_size: int = 100) -> None:
        assert settings.webhook_url is not None, "no webhook configured"
        self._url = settings.webhook_url.get_secret_value()
        token = settings.webhook_token
        self._headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._timeout = settings.webhook_timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def send(self, document: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(document)
        except queue.Full:
            log.warning("alert webhook: %d documents waiting, one dropped", self._queue.qsize())

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` s), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout, headers=self._headers) as client:
            while (document := self._queue.get()) is not None:
                try:
                    client.post(self._url, json=document).raise_for_status()
                except httpx.HTTPStatusError as exc:
                    log.warning("alert webhook answered %d", exc.response.status_code)
                except httpx.HTTPError as exc:
                    log.warning("alert webhook unreachable (%s)", type(exc).__name__)
