"""Fixtures: real clusters (etcd, Patroni, HAProxy) on free ports in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import RunningCluster, cluster_lifecycle


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    """The guide's setup: asynchronous replication, automatic failover."""
    # A small upload limit, so that the oversized-upload test stays cheap; views written often.
    apps = "max_upload_mb = 4\nview_flush_s = 0.5\n"
    with cluster_lifecycle(request, "videodb-it-", apps_toml=apps) as running:
        yield running
