"""Fixtures: real clusters (etcd, Patroni, HAProxy) on free ports in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import RunningCluster, cluster_lifecycle


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    """The guide's setup: asynchronous replication, automatic failover."""
    with cluster_lifecycle(request, "videodb-it-") as running:
        yield running
