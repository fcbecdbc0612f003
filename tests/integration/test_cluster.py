"""The guide's cluster, started for real: routing, replication, monitoring, security, commands."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration.harness import CliResult, RunningCluster, set_apply_delay
from videodb.backups.progress import size
from videodb.cluster.supervisor import supervisord_pid
from videodb.layout import tls_files
from videodb.secrets import SUPERUSER_FILE
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


def test_second_start_says_already_running_and_changes_nothing(cluster: RunningCluster) -> None:
    before = cluster.cli_json("status")
    again = cluster.cli_json("start", "video")
    after = cluster.cli_json("status")
    assert again["already_running"] is True
    assert [s["pid"] for s in before["services"]] == [s["pid"] for s in after["services"]]
    assert after["healthy"] is True


def test_start_with_a_changed_flag_applies_it_to_the_running_cluster(
    cluster: RunningCluster,
) -> None:
    """start video --replication sync on a running async cluster: applied and said, no restart."""
    before = {s["name"]: s["pid"] for s in cluster.cli_json("status")["services"]}
    try:
        result = cluster.cli("start", "video", "--replication", "sync")
        assert result.rc == 0, result
        assert "replication: async -> sync" in result.stdout
        assert cluster.cli_json("replication-status")["replicas"][0]["sync_state"] == "sync"
        again = cluster.cli_json("start", "video", "--replication", "sync")
        assert again["already_running"] is True and again["changes"] == []
    finally:
        back = cluster.cli_json("start", "video", "--replication", "async")
    assert back["changes"] == ["replication: sync -> async"]
    logged = cluster.cli("logs", "cli", "-n", "50", check=True).stdout  # and it is on record
    assert "applied to the running cluster: replication: async -> sync" in logged
    assert "platform.sh --config" in logged and "start video --replication sync" in logged
    after = {s["name"]: s["pid"] for s in cluster.cli_json("status")["services"]}
    assert after == before  # applied live: nothing was restarted


def test_library_errors_reach_the_user_as_one_line(cluster: RunningCluster) -> None:
    """A bad node name, a refused superuser connection: one line each, never a traceback."""
    bad = cluster.cli("add-replica", "Bad_Name")
    assert bad.rc == 2 and "Traceback" not in bad.stderr, bad
    assert "node name 'Bad_Name' is not allowed" in " ".join(bad.stderr.split())
    secret = cluster.layout.secret(SUPERUSER_FILE)
    real = secret.read_text()
    try:
        secret.write_text("not-the-password\n")
        refused = cluster.cli("backup-video")
    finally:
        secret.write_text(real)
    text = " ".join(refused.stderr.split())
    assert refused.rc == 1 and "Traceback" not in refused.stderr, refused
    assert "cannot connect to postgres-video-master" in text
    assert "password authentication failed" in text and "platform.sh logs" in text
    assert len(refused.stderr.strip().splitlines()) <= 3  # the progress line, then the error


def test_status_of_another_state_directory_never_asks_this_cluster(
    cluster: RunningCluster, tmp_path: Path
) -> None:
    """Same ports, other state directory: this cluster's processes are not that one's."""
    empty = tmp_path / "never-started"
    result = cluster.cli("--state-dir", str(empty), "status")
    assert result.rc == 3 and "nothing was ever started" in result.stdout
    assert "timeline" not in result.stdout and "streaming" not in result.stdout
    assert cluster.cli("--state-dir", str(empty), "haproxy-stats").rc == 3
    # Started there once, stopped now: every process STOPPED, and still nothing asked.
    (empty / "conf").mkdir(parents=True)
    (empty / "conf" / "supervisord.conf").write_text("; started once\n")
    report = cluster.cli_json("--state-dir", str(empty), "status", expect_rc=3)
    assert report["running"] is False and report["started"] is True
    for service in report["services"]:
        assert service["state"] == "STOPPED" and not service["healthy"], service
        assert "timeline" not in service["detail"] and "streaming" not in service["detail"]


def test_status_lists_every_process_with_role_pid_port(cluster: RunningCluster) -> None:
    report = cluster.cli_json("status")
    by_name = {s["name"]: s for s in report["services"]}
    assert set(by_name) == {
        "etcd",
        "postgres-video-master",
        "postgres-video-slave",
        "haproxy-postgres",
        "upload",
        "metadata",
        "streaming",
    }
    assert {by_name[a]["role"] for a in ("upload", "metadata", "streaming")} == {"app"}
    assert by_name["upload"]["ports"] == {"http": cluster.settings.apps.upload_port}
    assert by_name["postgres-video-master"]["role"] == "primary"
    assert by_name["postgres-video-slave"]["role"] == "replica"
    assert by_name["postgres-video-master"]["ports"]["postgres"] == cluster.master
    for service in report["services"]:
        assert service["state"] == "RUNNING" and service["healthy"] and service["pid"] > 0
    assert by_name["postgres-video-slave"]["postgres_pid"] > 0


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def test_the_postmasters_are_reaped_by_the_platforms_subreaper(cluster: RunningCluster) -> None:
    # Patroni double-forks PostgreSQL: without a subreaper a postmaster's parent is PID 1 (which
    # reaps late here and held a switchover up); with it, the reaper above supervisord.
    supervisord = supervisord_pid(cluster.layout)
    assert supervisord is not None
    reaper = _ppid(supervisord)
    cmdline = Path(f"/proc/{reaper}/cmdline").read_bytes().decode()
    assert "videodb.cluster.reaper" in cmdline
    report = cluster.cli_json("status")
    postmasters = [s["postgres_pid"] for s in report["services"] if s.get("postgres_pid")]
    assert len(postmasters) == 2
    for postmaster in postmasters:
        assert _ppid(postmaster) == reaper


def test_guide_write_test_through_write_port_lands_on_master(cluster: RunningCluster) -> None:
    """The guide's own check, with psql: it must land on the master."""
    out = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.write_port),
            "-U",
            "upload_user",
            "-d",
            "video_platform",
            "-Atc",
            "SELECT 'WRITE TEST', inet_server_port(), pg_is_in_recovery()",
        ],
        env={"PGPASSWORD": "upload_pass", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"WRITE TEST|{cluster.master}|f"


def test_reads_through_read_port_reach_both_nodes(cluster: RunningCluster) -> None:
    seen = set()
    for _ in range(8):
        with cluster.app_connect(cluster.read_port) as conn:
            row = conn.execute("SELECT inet_server_port()").fetchone()
            assert row is not None
            seen.add(row[0])
    assert seen == {cluster.master, cluster.slave}


def test_row_written_through_write_port_is_read_through_read_port(cluster: RunningCluster) -> None:
    marker = str(uuid.uuid4())
    with cluster.app_connect(cluster.write_port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS guide_check (id text PRIMARY KEY)")
        conn.execute("INSERT INTO guide_check VALUES (%s)", (marker,))

    def visible_on_both() -> bool:
        ports = set()
        for _ in range(6):
            with cluster.app_connect(cluster.read_port) as conn:
                try:
                    row = conn.execute(
                        "SELECT inet_server_port(), count(*) FROM guide_check WHERE id = %s",
                        (marker,),
                    ).fetchone()
                except errors.UndefinedTable:  # the CREATE TABLE has not been replayed yet
                    return False
                assert row is not None
                if row[1] != 1:
                    return False
                ports.add(row[0])
        return ports == {cluster.master, cluster.slave}

    wait_for(visible_on_both, timeout=15, what="the row on both nodes through the read port")


def test_write_through_read_port_on_slave_fails_read_only(cluster: RunningCluster) -> None:
    with cluster.app_connect(cluster.write_port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS guide_check (id text PRIMARY KEY)")

    def table_on_slave() -> bool:
        with cluster.app_connect(cluster.slave) as conn:
            row = conn.execute("SELECT to_regclass('guide_check') IS NOT NULL").fetchone()
            return bool(row and row[0])

    wait_for(table_on_slave, timeout=15, what="the table replayed on the slave")
    for _ in range(10):
        with cluster.app_connect(cluster.read_port) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert row is not None
            if not row[0]:
                continue
            with pytest.raises(errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO guide_check VALUES ('must-not-land')")
            break
    else:
        pytest.fail("no read-port connection reached the slave in 10 tries")
    with cluster.app_connect(cluster.write_port) as conn:
        row = conn.execute("SELECT count(*) FROM guide_check WHERE id = 'must-not-land'").fetchone()
        assert row == (0,)


def test_replication_status_shows_slave_streaming_with_lsns(cluster: RunningCluster) -> None:
    report = cluster.cli_json("replication-status")
    assert report["primary"] == "postgres-video-master"
    assert report["ok"] is True
    (replica,) = report["replicas"]
    assert replica["name"] == "postgres-video-slave"
    assert replica["state"] == "streaming"
    for key in ("sent_lsn", "write_lsn", "flush_lsn", "replay_lsn"):
        assert "/" in replica[key]
    assert isinstance(replica["lag_bytes"], int) and replica["lag_bytes"] >= 0
    assert isinstance(replica["lag_seconds"], float)
    assert replica["slot_name"] == "postgres_video_slave" and replica["slot_active"] is True
    assert replica["sync_state"] == "async"


def test_replication_status_exits_1_when_lag_exceeds_threshold(cluster: RunningCluster) -> None:
    """A threshold below zero is exceeded by any lag: the exit code and the message say so."""
    result = cluster.cli("replication-status", "--max-lag", "-1")
    assert result.rc == 1
    assert "exceeds" in result.stderr


def test_replication_status_reports_a_real_lag_the_replica_confirms(
    cluster: RunningCluster,
) -> None:
    """A lag over the limit is asked of the replica itself (the primary's replay_lag can count
    an idle spell); a replica really behind (replay held back 4 s) stays reported."""
    set_apply_delay(cluster, "4s")
    try:
        with cluster.app_connect(cluster.write_port) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS lag_probe (id serial PRIMARY KEY)")
            conn.execute("INSERT INTO lag_probe DEFAULT VALUES")

        def behind() -> CliResult | None:
            result = cluster.cli("replication-status", "--max-lag", "1")
            return result if result.rc == 1 else None

        result = wait_for(behind, timeout=20, what="the held-back replica reported behind")
        assert "exceeds 1.0 s" in result.stderr, result
    finally:
        set_apply_delay(cluster, None)
    wait_for(
        lambda: cluster.cli("replication-status", "--max-lag", "5").rc == 0,
        timeout=30,
        what="replication-status ok again once replay resumed",
    )


def test_haproxy_stats_routes_writes_to_master_only(cluster: RunningCluster) -> None:
    stats = cluster.cli_json("haproxy-stats")
    state = {(s["backend"], s["server"]): s["status"] for s in stats["servers"]}
    assert state[("postgres_write", "postgres-video-master")] == "UP"
    assert state[("postgres_write", "postgres-video-slave")] == "DOWN"
    assert state[("postgres_read", "postgres-video-master")] == "UP"
    assert state[("postgres_read", "postgres-video-slave")] == "UP"
    url = cluster.cli("haproxy-stats", "--url", check=True).stdout.strip()
    assert url == f"http://127.0.0.1:{cluster.settings.haproxy.stats_port}/stats"


def test_prometheus_metrics_are_served(cluster: RunningCluster) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{cluster.settings.haproxy.stats_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    assert 'haproxy_server_status{proxy="postgres_write",server="postgres-video-master"' in body


def test_replicator_cannot_read_application_data(cluster: RunningCluster, tmp_path: Path) -> None:
    """Even with its certificate (it has no password), the replication role opens replication
    connections only."""
    files = tls_files(cluster.layout)
    shutil.copy(files.replicator_cert, tmp_path / "r.crt")
    shutil.copy(files.replicator_key, tmp_path / "r.key")
    (tmp_path / "r.key").chmod(0o600)
    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": cluster.master,
        "user": "replicator",
        "connect_timeout": 3,
        "sslmode": "verify-full",
        "sslrootcert": str(files.ca),
        "sslcert": str(tmp_path / "r.crt"),
        "sslkey": str(tmp_path / "r.key"),
    }
    for dbname in ("video_platform", "postgres"):
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects"):
            psycopg.connect(**common, dbname=dbname)
    # It can open a replication connection, which is all it is for.
    with psycopg.connect(
        **common, dbname="replication", replication="true", autocommit=True
    ) as conn:
        assert conn.pgconn.exec_(b"IDENTIFY_SYSTEM").ntuples == 1


def test_app_user_cannot_open_replication_connection(cluster: RunningCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="replication connection"):
        cluster.app_connect(cluster.master, replication="true", dbname="replication")


def test_wrong_password_is_refused_and_passwords_are_scram(cluster: RunningCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        cluster.app_connect(cluster.write_port, password="not-the-password")
    result = cluster.cli(
        "shell-video",
        "-c",
        "SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolcanlogin ORDER BY 1",
        check=True,
    )
    rows = dict(
        (cells[0].strip(), cells[1].strip())
        for line in result.stdout.splitlines()
        if len(cells := line.split("|")) == 2 and cells[0].strip() != "rolname"
    )
    assert rows["postgres"] == rows["upload_user"] == "SCRAM-SHA-256$"
    assert rows["replicator"] == ""  # no password at all: it logs in with a certificate


def _listening(port: int) -> list[str]:
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                addresses.append(local.rsplit(":", 1)[0])
    return addresses


def test_every_port_listens_on_loopback_only(cluster: RunningCluster) -> None:
    for what, port in cluster.settings.all_ports().items():
        addresses = _listening(port)
        assert addresses, f"{what} ({port}) is not listening"
        assert set(addresses) == {"0100007F"}, f"{what} ({port}) listens on {addresses}"


def test_superuser_password_never_in_logs_or_command_lines(cluster: RunningCluster) -> None:
    password = cluster.secrets.superuser_password
    for log in cluster.layout.logs.rglob("*"):
        if log.is_file():
            assert password not in log.read_text(errors="replace"), log
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert password not in cmdline, proc.name
    mode = (cluster.layout.secrets / "superuser.password").stat().st_mode & 0o777
    assert mode == 0o600
    config = cluster.cli("config", check=True).stdout
    assert password not in config and "upload_pass" not in config


def test_shell_video_runs_on_the_master(cluster: RunningCluster) -> None:
    result = cluster.cli("shell-video", "-c", "SELECT inet_server_port()", check=True)
    assert str(cluster.master) in result.stdout
    bad = cluster.cli("shell-video", "-c", "SELEKT 1")
    assert bad.rc != 0 and "syntax error" in bad.stderr


def test_logs_shows_each_service_and_rejects_unknown(cluster: RunningCluster) -> None:
    for service in ("postgres-video-master", "postgres-video-slave", "haproxy-postgres", "etcd"):
        result = cluster.cli("logs", service, "-n", "3", check=True)
        assert result.stdout.strip(), service
    master = cluster.cli("logs", "postgres-video-master", "-n", "200", check=True).stdout
    # PostgreSQL's own log (a file per weekday, rotated) is shown beside Patroni's.
    assert "-postgresql/postgresql-" in master and ".log" in master
    unknown = cluster.cli("logs", "nginx")
    assert unknown.rc == 2 and "haproxy-postgres" in unknown.stderr


def test_backup_video_writes_a_restorable_dump(cluster: RunningCluster) -> None:
    with cluster.app_connect(cluster.write_port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS backup_check (id int)")
    shown = cluster.cli("backup-video")
    assert shown.rc == 0, shown
    progress = " ".join(shown.stderr.split())
    # The progress says what it measures: table bytes on disk, then the file it wrote.
    assert "table data dumped (size on disk):" in progress and "(100 %)" in progress
    written = progress.split("dump file written: ")[1].split(" (compressed)")[0]
    dumps = [b for b in cluster.cli_json("backup", "list")["backups"] if b["kind"] == "logical"]
    assert written == size(dumps[-1]["size_bytes"])  # the file's own size, not the tables'
    result = cluster.cli_json("backup-video")
    path = Path(result["path"])
    assert path.parent == cluster.layout.backups / "dumps"
    assert path.stat().st_size == result["size_bytes"] > 0
    listing = subprocess.run(
        [str(cluster.settings.postgresql.bin_dir / "pg_restore"), "--list", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TABLE public backup_check" in listing
