"""Prometheus metrics of a node, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from catalog import CatalogStats
from ingest import IngestResult, Outcome


@dataclass(frozen=True)
class IngestCounts:
    """Instances received since the node started: accepted (stored, replaced or already
    there), refused (``rejected_*``: the sender's data) and failed (``failed_*``: the node's)."""

    accepted: float = 0.0
    rejected: float = 0.0
    failed: float = 0.0

    def __sub__(self, other: IngestCounts) -> IngestCounts:
        return IngestCounts(
            self.accepted - other.accepted,
            self.rejected - other.rejected,
            self.failed - other.failed,
        )


class NodeMetrics:
    """Counters fed by ingest results, plus catalog totals read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances = Counter(
            "pacsnode_instances",
            "Instances received, by door and outcome.",
            ["door", "outcome"],
            registry=self.registry,
        )
        self.stored_bytes = Counter(
            "pacsnode_stored_bytes",
            "Bytes of instances stored (new or replaced).",
            ["door"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "pacsnode_ingest_seconds",
            "Time from receiving an instance to its final result.",
            ["door"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.active_associations = Gauge(
            "pacsnode_dimse_active_associations",
            "DIMSE associations in progress.",
            registry=self.registry,
        )
        self.alerts_active = Gauge(
            "pacsnode_alerts_active",
            "Alerts in effect, by kind (node.alerts).",
            ["kind"],
            registry=self.registry,
        )
        self.alerts_raised = Counter(
            "pacsnode_alerts_raised",
            "Alerts raised since the node started, by kind.",
            ["kind"],
            registry=self.registry,
        )

    def observe(self, result: IngestResult) -> None:
        self.record(result.source.door, result.outcome, result.seconds, result.size)

    def record(self, door: str, outcome: Outcome, seconds: float, size: int) -> None:
        """Count one ingest result; the DICOM worker processes send theirs to the main
        process (:mod:`node.workers`), whose registry ``/metrics`` serves."""
        self.instances.labels(door=door, outcome=outcome.value).inc()
        self.ingest_seconds.labels(door=door).observe(seconds)
        if outcome.success and outcome.value != "duplicate":
            self.stored_bytes.labels(door=door).inc(size)

    def ingest_counts(self) -> IngestCounts:
        """The ``pacsnode_instances`` counter summed over doors, by class of outcome."""
        sums = {"accepted": 0.0, "rejected": 0.0, "failed": 0.0}
        for metric in self.instances.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    outcome = Outcome(sample.labels["outcome"])
                    sums[_KIND.get(outcome, "accepted")] += sample.value
        return IngestCounts(**sums)

    def watch_catalog(self, stats: Callable[[], CatalogStats]) -> None:
        """Report catalog totals, read when Prometheus scrapes."""
        self.registry.register(_CatalogCollector(stats))


_KIND = {
    **{o: "rejected" for o in Outcome if o.value.startswith("rejected")},
    **{o: "failed" for o in Outcome if o.value.startswith("failed")},
}


class _CatalogCollector(Collector):
    def __init__(self, stats: Callable[[], CatalogStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        for name in ("patients", "studies", "series", "instances", "bytes"):
            yield GaugeMetricFamily(
                f"pacsnode_catalog_{name}",
                f"{name.capitalize()} in the catalog.",
                value=getattr(stats, name),
            )
