"""Monitoring on a real cluster: Prometheus scraping every target, alerts that fire and resolve
for real faults (a replica stopped, replay paused past 5 s, WAL archiving broken, a disk
threshold above current use, a scheduled backup failing and overdue), each seen by
`platform.sh alerts --json` and delivered by Alertmanager to a webhook receiver started here,
with labels naming the node; a scheduled base backup running by itself; and the operations
page in Chromium (topology, a lag graph with points, the failover this test causes, the alert).

Its own cluster, with monitoring on (the session's has it off), scraping every second.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.chromium import viewport
from tests.integration.harness import RunningCluster, cluster_lifecycle
from videodb.backup_repo import repo_for
from videodb.cluster.health import check_health
from videodb.layout import tls_files
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration

ALERT_WAIT_S = 90.0


class Receiver:
    """A webhook receiver: every notification Alertmanager POSTs."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for note in self.received for a in note.get("alerts", [])]

    def delivered(self, name: str, status: str, **labels: str) -> bool:
        return any(
            a["labels"].get("alertname") == name
            and a.get("status") == status
            and all(a["labels"].get(k) == v for k, v in labels.items())
            for a in self.alerts()
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    try:
        yield found
    finally:
        found.close()


@pytest.fixture(scope="module")
def watched(request: pytest.FixtureRequest, receiver: Receiver) -> Iterator[RunningCluster]:
    monitoring = (
        "enabled = true\n"
        "scrape_interval_s = 1\n"
        "alert_for_s = 2\n"
        "group_wait_s = 1\n"
        f'webhook_url = "{receiver.url}"\n'
    )
    with cluster_lifecycle(request, "videodb-mon-", monitoring_toml=monitoring) as running:
        yield running


def firing(cluster: RunningCluster, name: str, **labels: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.cli_json("alerts")
    return [
        a
        for a in found
        if a["name"] == name
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def fires_and_is_delivered(
    cluster: RunningCluster, receiver: Receiver, name: str, **labels: str
) -> dict[str, Any]:
    def first() -> dict[str, Any] | None:
        found = firing(cluster, name, **labels)
        return found[0] if found else None

    alert = wait_for(
        first,
        timeout=ALERT_WAIT_S,
        what=f"alert {name} {labels} firing in 'platform.sh alerts --json'",
        interval=1.0,
    )
    wait_for(
        lambda: receiver.delivered(name, "firing", **labels),
        timeout=ALERT_WAIT_S,
        what=f"alert {name} {labels} delivered to the webhook",
        interval=0.5,
    )
    return dict(alert)


def resolves_and_is_delivered(
    cluster: RunningCluster, receiver: Receiver, name: str, **labels: str
) -> None:
    wait_for(
        lambda: not firing(cluster, name, **labels),
        timeout=ALERT_WAIT_S,
        what=f"alert {name} {labels} no longer firing",
        interval=1.0,
    )
    wait_for(
        lambda: receiver.delivered(name, "resolved", **labels),
        timeout=ALERT_WAIT_S,
        what=f"the resolution of {name} {labels} delivered to the webhook",
        interval=0.5,
    )


def healthy(cluster: RunningCluster) -> None:
    wait_for(
        lambda: check_health(cluster.settings).healthy,
        timeout=120,
        what="a healthy cluster",
    )


def superuser(cluster: RunningCluster, port: int) -> Any:
    return cluster.app_connect(
        port,
        user=cluster.settings.database.superuser,
        password=cluster.secrets.superuser_password,
        dbname="postgres",
    )


def prometheus(cluster: RunningCluster, path: str) -> Any:
    port = cluster.settings.monitoring.prometheus_port
    body = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]


def test_every_target_is_scraped_and_nothing_fires(watched: RunningCluster) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets = prometheus(watched, "/api/v1/targets")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, timeout=60, what="every Prometheus target up", interval=1.0)
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == {
        "node",
        "patroni",
        "postgres",
        "etcd",
        "haproxy",
        "apps",
        "prometheus",
        "alertmanager",
        "backup-scheduler",
    }
    nodes = {t["labels"].get("node") for t in targets if t["labels"]["job"] == "postgres"}
    assert nodes == {n.name for n in watched.settings.nodes}
    wait_for(
        lambda: not [a for a in watched.cli_json("alerts") if a["state"] == "firing"],
        timeout=60,
        what="no alert firing on a healthy platform",
    )
    status = watched.cli_json("status")
    monitors = [s for s in status["services"] if s["role"] == "monitoring"]
    assert {s["name"] for s in monitors} >= {"prometheus", "alertmanager", "node-exporter"}
    assert all(s["healthy"] for s in monitors), monitors


def test_the_exporters_log_in_as_a_pg_monitor_role_by_certificate_only(
    watched: RunningCluster,
) -> None:
    role = watched.settings.database.monitor_user
    with superuser(watched, watched.master) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcanlogin, rolreplication, rolpassword IS NULL,"
            " pg_has_role(oid, 'pg_monitor', 'member') FROM pg_authid WHERE rolname = %s",
            (role,),
        ).fetchone()
        assert row == (False, True, False, True, True), row
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.usename = %s AND s.ssl AND s.client_dn = %s",
            (role, f"/CN={role}"),
        ).fetchone()
    assert sessions is not None and sessions[0] >= 1  # the master's exporter, over TLS
    files = tls_files(watched.layout)
    with_cert = {
        "user": role,
        "sslmode": "verify-ca",
        "sslrootcert": str(files.ca),
        "sslcert": str(files.monitor_cert),
        "sslkey": str(files.monitor_key),
    }
    with watched.app_connect(watched.master, dbname="postgres", **with_cert) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    # Not into the application's database, and never with a password.
    for refused in (
        {**with_cert, "dbname": watched.settings.database.name},
        {"user": role, "dbname": "postgres", "password": "anything", "sslmode": "require"},
    ):
        with pytest.raises(psycopg.OperationalError):
            watched.app_connect(watched.master, **refused).close()


def test_a_stopped_replica_fires_and_resolves(watched: RunningCluster, receiver: Receiver) -> None:
    healthy(watched)
    slave = watched.settings.nodes[1].name
    watched.supervisor().stop_program(slave)
    try:
        alert = fires_and_is_delivered(watched, receiver, "ReplicaNotStreaming", node=slave)
        assert slave in alert["summary"] and "replication-status" in alert["summary"]
        table = watched.cli("alerts", check=True).stdout  # the same, for a person
        assert "ReplicaNotStreaming" in table and "firing" in table and slave in table
        fires_and_is_delivered(watched, receiver, "TargetDown", job="patroni", node=slave)
    finally:
        watched.supervisor().start_program(slave)
    resolves_and_is_delivered(watched, receiver, "ReplicaNotStreaming", node=slave)
    healthy(watched)


def test_paused_replay_fires_the_lag_alert_and_resolves(
    watched: RunningCluster, receiver: Receiver
) -> None:
    healthy(watched)
    slave = watched.settings.nodes[1].name
    # Patroni resumes a paused replay unless the cluster is in maintenance mode.
    assert watched.cli("maintenance", "on").rc == 0
    try:
        with superuser(watched, watched.slave) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        with superuser(watched, watched.master) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS lag_probe (at timestamptz)")

            def behind() -> dict[str, Any] | None:
                conn.execute("INSERT INTO lag_probe VALUES (now())")
                found = firing(watched, "ReplicationLagHigh", node=slave)
                return found[0] if found else None

            alert = wait_for(behind, timeout=ALERT_WAIT_S, what="the lag alert", interval=1.0)
        assert float(alert["value"]) > watched.settings.monitoring.lag_max_s
        fires_and_is_delivered(watched, receiver, "ReplicationLagHigh", node=slave)
    finally:
        with superuser(watched, watched.slave) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        assert watched.cli("maintenance", "off").rc == 0
    resolves_and_is_delivered(watched, receiver, "ReplicationLagHigh", node=slave)


def test_broken_archiving_fires_and_resolves(watched: RunningCluster, receiver: Receiver) -> None:
    healthy(watched)
    master = watched.settings.nodes[0].name
    wal = repo_for(watched.settings, watched.layout).wal
    mode = wal.stat().st_mode & 0o777

    def switch() -> bool:
        """A new WAL segment ready to archive (the archiver tries again then)."""
        with superuser(watched, watched.master) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS archive_probe (at timestamptz)")
            conn.execute("INSERT INTO archive_probe VALUES (now())")
            conn.execute("SELECT pg_switch_wal()")
        return True

    os.chmod(wal, 0o500)  # PostgreSQL's OS user can no longer write the archive
    try:
        switch()
        alert = fires_and_is_delivered(watched, receiver, "WalArchivingFailing", node=master)
        assert master in alert["summary"]
    finally:
        os.chmod(wal, mode)
    # The archiver tries again when the next segment is ready.
    wait_for(
        lambda: switch() and not firing(watched, "WalArchivingFailing", node=master),
        timeout=ALERT_WAIT_S,
        what="archiving working again",
        interval=3.0,
    )
    resolves_and_is_delivered(watched, receiver, "WalArchivingFailing", node=master)


def test_a_disk_threshold_above_current_use_fires_and_resolves(
    watched: RunningCluster, receiver: Receiver
) -> None:
    master, slave = (n.name for n in watched.settings.nodes)
    raised = watched.cli(
        "--set", "monitoring.disk_free_min_percent=99.999", "start", "video", timeout=180
    )
    assert raised.rc == 0, raised
    assert "prometheus reloaded its configuration" in raised.stdout + raised.stderr, raised
    alert = fires_and_is_delivered(watched, receiver, "DiskSpaceLow")
    holds = alert["labels"]["holds"]
    assert master in holds and slave in holds and "backups" in holds, alert
    assert alert["labels"]["host"] == "local" and alert["labels"]["mountpoint"].startswith("/")
    back = watched.cli("start", "video", timeout=180)
    assert back.rc == 0, back
    resolves_and_is_delivered(watched, receiver, "DiskSpaceLow")


def test_a_scheduled_base_backup_runs_by_itself_and_a_missed_one_alerts(
    watched: RunningCluster, receiver: Receiver
) -> None:
    healthy(watched)
    repo = repo_for(watched.settings, watched.layout)
    set_ = watched.cli_json("backup", "schedule", "--base-every", "15s")
    assert set_["schedule"]["base_every_s"] == 15 and set_["schedule"]["dump_every_s"] is None
    try:

        def scheduled() -> dict[str, Any] | None:
            listed = watched.cli_json("backup", "list")
            runs = [r for r in listed["scheduled_runs"] if r["ok"] and r["kind"] == "base"]
            ids = {b["id"]: b for b in listed["backups"]}
            return ids.get(runs[-1]["backup_id"]) if runs else None

        made = wait_for(scheduled, timeout=120, what="a scheduled base backup", interval=1.0)
        assert made["kind"] == "physical" and made["extra"]["scheduled"] is True
        assert made["id"] in watched.cli("backup", "list", check=True).stdout

        # The repository broken: every run fails, and soon the schedule is missed.
        moved = repo.root / "base.aside"
        repo.base.rename(moved)
        repo.base.write_text("not a directory\n")
        try:
            fires_and_is_delivered(watched, receiver, "BackupFailed", kind="base")
            fires_and_is_delivered(watched, receiver, "BackupScheduleMissed", kind="base")
            failed = [
                r for r in watched.cli_json("backup", "list")["scheduled_runs"] if not r["ok"]
            ]
            assert failed and "base" in failed[-1]["error"], failed
        finally:
            repo.base.unlink()
            moved.rename(repo.base)
        resolves_and_is_delivered(watched, receiver, "BackupFailed", kind="base")
        resolves_and_is_delivered(watched, receiver, "BackupScheduleMissed", kind="base")
    finally:
        watched.cli("backup", "schedule", "--off", check=True)
        shutil.rmtree(repo.root / "base.aside", ignore_errors=True)


def test_the_operations_page_shows_topology_lag_failover_and_alert(
    watched: RunningCluster, receiver: Receiver, browser: WebDriver, tmp_path: Path
) -> None:
    healthy(watched)
    master, slave = (n.name for n in watched.settings.nodes)
    switched = watched.cli("switchover", "--to", slave, timeout=120)
    assert switched.rc == 0, switched
    try:
        fires_and_is_delivered(watched, receiver, "FailoverHappened", node=slave)
        viewport(browser, 1280, 900)
        browser.get(f"{watched.app_url('web')}/ops")
        wait = WebDriverWait(browser, 60)

        def shows() -> bool:
            browser.refresh()
            WebDriverWait(browser, 20).until(
                lambda d: d.execute_script("return document.body.dataset.loaded") == "true"
            )
            history = str(browser.find_element(By.ID, "history").text)
            alerts = str(browser.find_element(By.ID, "alerts").text)
            return slave in history and "FailoverHappened" in alerts

        wait.until(lambda _: shows())
        topology = str(browser.find_element(By.ID, "topology").text)
        assert master in topology and slave in topology and "leader" in topology, topology
        lag = browser.find_element(By.ID, "lag")
        assert int(str(lag.get_attribute("data-points"))) > 0
        assert set(str(lag.get_attribute("data-series")).split(",")) == {master, slave}
        assert browser.find_elements(By.CSS_SELECTOR, "#lag canvas"), "no lag chart drawn"
        assert browser.find_elements(By.CSS_SELECTOR, "#tps canvas"), "no commits chart drawn"
        web = watched.app_url("web")
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert all(str(url).startswith(web) for url in fetched), fetched  # no CDN
        browser.save_screenshot(str(tmp_path / "ops.png"))
    finally:
        back = watched.cli("switchover", "--to", master, timeout=120)
        assert back.rc == 0, back
