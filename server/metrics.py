"""Prometheus metrics: requests and latency by RPC and status, bundle version and size.

Each server owns its registry (no process-global state); ``serve`` exposes it
over HTTP on loopback when ``--metrics-port`` is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.searcher import Searcher

if TYPE_CHECKING:
    from server.admission import Admission
    from server.reloader import BundleManager


class _StateCollector(Collector):
    """Reads reload and admission state at scrape time (no copies to keep in sync)."""

    def __init__(self, manager: BundleManager, admission: Admission) -> None:
        self._manager = manager
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        status = self._manager.status()
        yield CounterMetricFamily(
            "posters_reload_failures", "Failed bundle reload attempts", value=status.reload_failures
        )
        desired = GaugeMetricFamily(
            "posters_bundle_desired_info", "The bundle CURRENT names (value 1)", labels=["version"]
        )
        desired.add_metric([status.desired_version], 1)
        yield desired
        yield GaugeMetricFamily(
            "posters_bundle_stale", "1 while the serving bundle is not the one CURRENT names", value=int(status.stale)
        )
        in_flight = GaugeMetricFamily("posters_calls_in_flight", "Admitted calls by cost class", labels=["cost"])
        rejected = CounterMetricFamily(
            "posters_calls_rejected",
            "Calls refused because their cost class was full (RESOURCE_EXHAUSTED)",
            labels=["cost"],
        )
        for name, n in self._admission.in_flight().items():
            in_flight.add_metric([name], n)
        for cost, n in self._admission.rejected.items():
            rejected.add_metric([cost.value], n)
        yield in_flight
        yield rejected
        yield CounterMetricFamily(
            "posters_image_embeddings", "Image embeddings started", value=self._manager.embedding_gate.started
        )


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "posters_requests", "Requests by RPC and status code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "posters_request_seconds",
            "Request latency by RPC",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bundle = Gauge(
            "posters_bundle_info",
            "The serving bundle (value 1)",
            ["version", "model", "index_type"],
            registry=self.registry,
        )
        self.items = Gauge("posters_bundle_items", "Items in the serving bundle", registry=self.registry)
        self.loaded_at = Gauge(
            "posters_bundle_loaded_timestamp_seconds", "When the serving bundle was loaded", registry=self.registry
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def on_bundle(self, searcher: Searcher) -> None:
        self.bundle.clear()
        info = searcher.info()
        self.bundle.labels(info.bundle_version, info.model, info.index_type).set(1)
        self.items.set(info.item_count)
        self.loaded_at.set(info.loaded_at)

    def watch(self, manager: BundleManager, admission: Admission) -> None:
        """Expose reload status (desired vs serving, failures) and admission counts."""
        self.registry.register(_StateCollector(manager, admission))

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on a daemon thread; returns the bound port (``port`` 0: any free port)."""
        httpd, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(httpd.server_port)
