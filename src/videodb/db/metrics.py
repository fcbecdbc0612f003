"""Prometheus metrics of the data layer: where reads were served, token waits, retries, pools."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool


class _PoolCollector(Collector):
    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "videodb_pool_connections_in_use", "Connections checked out", labels=["pool"]
        )
        idle = GaugeMetricFamily("videodb_pool_connections_idle", "Idle pooled", labels=["pool"])
        for name, engine in self.engines.items():
            pool = engine.pool
            if isinstance(pool, QueuePool):
                used.add_metric([name], pool.checkedout())
                idle.add_metric([name], pool.checkedin())
        yield used
        yield idle


class Metrics:
    def __init__(self, registry: CollectorRegistry, engines: Mapping[str, Engine]) -> None:
        self.reads = Counter(
            "videodb_reads",
            "Reads by where they were served: replica, primary (through the read port), "
            "or writer (a fallback for read-your-writes or staleness)",
            ["served_by"],
            registry=registry,
        )
        self.token_wait = Histogram(
            "videodb_token_wait_seconds",
            "Time a read waited for its replica to replay past a consistency token",
            buckets=(0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=registry,
        )
        self.position_checks = Counter(
            "videodb_position_checks",
            "How reads with a token or a staleness bound learned their node's position: cached "
            "(seen before on the connection, no query), pipelined (sent with the read, one round "
            "trip), behind (pipelined, the node had not caught up: read again), asked (a round "
            "trip of its own first)",
            ["how"],
            registry=registry,
        )
        self.retries = Counter(
            "videodb_retries",
            "Retried operations by kind of failure",
            ["operation", "failure"],
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "videodb_idempotent_replays",
            "Writes answered from their idempotency key instead of written again",
            registry=registry,
        )
        registry.register(_PoolCollector(engines))
