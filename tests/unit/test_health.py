"""What `status` says about synchronous replication, from members and /sync as Patroni reports
them (the HTTP calls are replaced at the module's boundary; no server here)."""

from __future__ import annotations

import pytest

from videodb.cluster import health
from videodb.cluster.patroni_api import MemberStatus, PatroniAPI, Role
from videodb.config import Settings

MEMBERS = [
    MemberStatus("postgres-video-master", True, Role.PRIMARY, "running", None, 3),
    MemberStatus("postgres-video-slave", True, Role.REPLICA, "running", "streaming", 3),
]


def report(
    monkeypatch: pytest.MonkeyPatch, replication: str, sync_named: bool
) -> health.HealthReport:
    monkeypatch.setattr(health, "etcd_healthy", lambda _s: True)
    monkeypatch.setattr(PatroniAPI, "members", lambda _self: MEMBERS)
    monkeypatch.setattr(health, "sync_standby_chosen", lambda _s: sync_named)
    settings = Settings()
    settings = settings.model_copy(
        update={"patroni": settings.patroni.model_copy(update={"replication": replication})}
    )
    return health.check_health(settings, check_haproxy=False)


def test_sync_without_a_named_standby_says_commits_are_unprotected_and_failover_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problems = report(monkeypatch, "sync", sync_named=False).problems
    assert len(problems) == 1, problems
    assert "unprotected" in problems[0] and "not replaced automatically" in problems[0]
    assert "sync-strict" in problems[0]


def test_strict_sync_without_a_named_standby_says_commits_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problems = report(monkeypatch, "sync-strict", sync_named=False).problems
    assert problems == ["no synchronous standby named: commits wait until a replica streams"]


@pytest.mark.parametrize(("replication", "sync_named"), [("sync", True), ("async", False)])
def test_a_named_standby_or_async_replication_is_healthy(
    monkeypatch: pytest.MonkeyPatch, replication: str, sync_named: bool
) -> None:
    assert report(monkeypatch, replication, sync_named).healthy
