"""Fixtures: real clusters (etcd, Patroni, HAProxy) on free ports in temporary directories.

The session's cluster is shared by many modules, and some of them change its roles (a
promotion, switchovers, a killed master). Before each test that uses it, `guide_roles` puts it
back as the guide has it: healthy, the master on postgres-video-master, the slave streaming. So
every module passes alone and in any order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.chromium import browser  # noqa: F401 (a fixture: headless Chromium)
from tests.integration.harness import RunningCluster, cluster_lifecycle, ensure_guide_roles


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    """The guide's setup: asynchronous replication, automatic failover."""
    # A small upload limit, so that the oversized-upload test stays cheap (above S3's 5 MiB
    # part, so that an upload to SeaweedFS can send whole parts); views written often.
    apps = "max_upload_mb = 16\nview_flush_s = 0.5\n"
    with cluster_lifecycle(request, "videodb-it-", apps_toml=apps) as running:
        yield running


@pytest.fixture(autouse=True)
def guide_roles(request: pytest.FixtureRequest) -> None:
    if "cluster" in request.fixturenames:
        ensure_guide_roles(request.getfixturevalue("cluster"))
