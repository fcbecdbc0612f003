"""TLS and credential rotation on one machine, on a cluster of this module's own (rotations
change its CA and passwords): verify-full through HAProxy, the replication role's certificate,
every rotation under load with no failed request and no failover, and certificates checked at
start."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from cryptography import x509

from tests.integration.harness import RunningCluster, cluster_lifecycle
from tests.integration.probes import https_status, tls_context
from tests.integration.rotation_load import Load
from videodb import certs
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.served_cert import served_serial
from videodb.cluster.supervisor import supervisord_pid
from videodb.layout import tls_files
from videodb.services.runtime import AppConfig
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration

TABLE = "tls_rotation_ledger"


@pytest.fixture(scope="module")
def tls_cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    with cluster_lifecycle(request, "videodb-tls-") as running:
        yield running


def ca_file(cluster: RunningCluster) -> str:
    return str(tls_files(cluster.layout).ca)


def app_params(cluster: RunningCluster) -> dict[str, Any]:
    db = cluster.settings.database
    return {
        "user": db.app_user,
        "password": db.app_password.get_secret_value(),
        "dbname": db.name,
        "connect_timeout": 3,
    }


def test_verify_full_through_the_write_and_read_ports_by_the_service_name(
    tls_cluster: RunningCluster,
) -> None:
    c = tls_cluster
    name = c.settings.postgres_tls_name()
    for port, in_recovery in ((c.write_port, {False}), (c.read_port, {False, True})):
        with psycopg.connect(
            host=name,
            hostaddr="127.0.0.1",
            port=port,
            sslmode="verify-full",
            sslrootcert=ca_file(c),
            **app_params(c),
        ) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), ssl, version FROM pg_stat_ssl "
                "WHERE pid = pg_backend_pid()"
            ).fetchone()
        assert row is not None and row[0] in in_recovery and row[1] is True, row
        assert row[2] in ("TLSv1.2", "TLSv1.3")
    # A name the certificates do not hold fails verification: verify-full checks it.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(
            host="not-the-service",
            hostaddr="127.0.0.1",
            port=c.write_port,
            sslmode="verify-full",
            sslrootcert=ca_file(c),
            **app_params(c),
        )
    # The applications connect that way (their datasource) and use TLS.
    datasource = AppConfig.load(c.layout.apps_config()).datasource
    assert datasource.sslmode == "verify-full" and datasource.tls_name == name
    with c.app_connect(c.master, sslmode="disable") as conn:
        rows = conn.execute(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'videodb-%'"
        ).fetchone()
    assert rows is not None and rows[1] > 0 and rows[0] == rows[1], rows


def test_the_replication_role_has_a_certificate_and_no_password(
    tls_cluster: RunningCluster, tmp_path: Path
) -> None:
    c = tls_cluster
    files = tls_files(c.layout)
    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": c.master,
        "user": "replicator",
        "dbname": "replication",
        "replication": "true",
        "connect_timeout": 3,
        "sslmode": "verify-full",
        "sslrootcert": str(files.ca),
    }
    for password in (c.secrets.superuser_password, "", "replicator"):
        with pytest.raises(psycopg.OperationalError, match="certificate"):
            psycopg.connect(**common, password=password)
    foreign = certs.issue(certs.new_authority("another CA"), "replicator", server=False)
    (tmp_path / "r.crt").write_text(foreign.cert_pem)
    (tmp_path / "r.key").write_text(foreign.key_pem)
    (tmp_path / "r.key").chmod(0o600)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**common, sslcert=str(tmp_path / "r.crt"), sslkey=str(tmp_path / "r.key"))
    # The cluster's certificate for it opens a replication connection (what replicas use).
    shutil.copy(files.replicator_cert, tmp_path / "ok.crt")
    shutil.copy(files.replicator_key, tmp_path / "ok.key")
    (tmp_path / "ok.key").chmod(0o600)
    with psycopg.connect(
        **common, sslcert=str(tmp_path / "ok.crt"), sslkey=str(tmp_path / "ok.key")
    ) as conn:
        assert conn.info.status == psycopg.pq.ConnStatus.OK


# -- rotations under load -------------------------------------------------------------------


def primary_and_timeline(cluster: RunningCluster) -> tuple[str, int | None]:
    members = PatroniAPI(cluster.settings).members()
    primary = [m for m in members if m.role.value == "primary"]
    assert len(primary) == 1, members
    return primary[0].name, primary[0].timeline


def rotate(cluster: RunningCluster, *args: str) -> dict[str, Any]:
    before = primary_and_timeline(cluster)
    writes_before = 0
    with Load(cluster.layout.apps_config(), cluster.app_url("web") + "/api/videos", TABLE) as load:
        writes_before = load.writes
        result = cluster.cli_json("rotate", *args)
        wait_for(
            lambda: load.writes > writes_before + 5, timeout=30, what="writes after the rotation"
        )
    assert load.failures == [], load.failures[:5]
    assert primary_and_timeline(cluster) == before  # no failover, no promotion
    return dict(result)


def test_every_rotation_under_load_fails_no_request_and_keeps_the_timeline(
    tls_cluster: RunningCluster, tmp_path: Path
) -> None:
    c = tls_cluster
    with c.app_connect(c.write_port, sslmode="require") as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY)")
    files = tls_files(c.layout)
    node = c.settings.nodes[0]

    # certs: new ones served by PostgreSQL and the REST API, without a restart
    postmaster = c.layout.node_data(node.name) / "postmaster.pid"
    pid_before = postmaster.read_text().split()[0]
    old_serial = served_serial("127.0.0.1", node.port, postgres=True)
    result = rotate(c, "certs")
    new_serial = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    assert old_serial != new_serial
    assert served_serial("127.0.0.1", node.port, postgres=True) == new_serial
    assert served_serial("127.0.0.1", node.api_port, postgres=False) == new_serial
    assert postmaster.read_text().split()[0] == pid_before  # reloaded, not restarted
    assert result["rotated"] == "certs"

    # ca: the old CA's certificates are refused afterwards, by etcd, Patroni and PostgreSQL
    for name in ("ca.crt", "host.crt", "host.key"):
        shutil.copy(files.root / name, tmp_path / f"old-{name}")
    (tmp_path / "old-host.key").chmod(0o600)
    rotate(c, "ca")
    old_client = tls_context(files.ca, tmp_path / "old-host.crt", tmp_path / "old-host.key")
    etcd = c.settings.etcd_client_url(c.settings.this_host()) + "/health"
    assert str(https_status(etcd, old_client)).startswith("refused"), "etcd"
    api = c.secrets.api_password
    reload = f"https://127.0.0.1:{node.api_port}/reload"
    assert str(https_status(reload, old_client, api)).startswith("refused"), "patroni"
    new_client = tls_context(files.ca, files.cert, files.key)
    assert https_status(reload, new_client, api) == 202
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        c.app_connect(c.write_port, sslmode="verify-ca", sslrootcert=str(tmp_path / "old-ca.crt"))

    # passwords: each old one refused afterwards (checked here again, not only by the command)
    old_app = c.settings.database.app_password.get_secret_value()
    rotate(c, "password", "app")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        c.app_connect(c.write_port, password=old_app, sslmode="require")
    assert c.settings.database.app_password.get_secret_value() != old_app
    with c.app_connect(c.write_port, sslmode="require") as conn:
        conn.execute("SELECT 1")

    old_super = c.secrets.superuser_password
    rotate(c, "password", "superuser")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=c.master,
            user="postgres",
            password=old_super,
            dbname="postgres",
            sslmode="require",
        )
    assert c.cli("status").rc == 0  # the CLI's own superuser connections use the new one

    old_api = c.secrets.api_password
    rotate(c, "password", "patroni-api")
    assert https_status(reload, new_client, old_api) == 401
    assert https_status(reload, new_client, c.secrets.api_password) == 202


def test_a_missing_or_expired_certificate_stops_start_with_the_file_and_the_fix(
    tls_cluster: RunningCluster, tmp_path: Path
) -> None:
    c = tls_cluster
    files = tls_files(c.layout)
    assert c.cli("stop").rc == 0
    try:
        files.cert.rename(tmp_path / "host.crt")
        missing = c.cli("start", "video", timeout=60)
        assert missing.rc == 2, missing
        assert f"{files.cert} is missing" in missing.stderr and "rotate certs" in missing.stderr
        assert supervisord_pid(c.layout) is None  # refused before anything started

        ca = certs.load_authority(
            c.layout.secret("ca.crt").read_text(), c.layout.secret("ca.key").read_text(), "x"
        )
        expired = _expired_certificate(ca)
        files.cert.write_text(expired)
        result = c.cli("start", "video", timeout=60)
        assert result.rc == 2, result
        assert f"certificate {files.cert} expired on" in result.stderr
        assert "rotate certs" in result.stderr
        assert supervisord_pid(c.layout) is None

        fixed = c.cli("rotate", "certs")
        assert fixed.rc == 0, fixed
    finally:
        started = c.cli("start", "video", timeout=240)
    assert started.rc == 0, started
    status = c.cli_json("status")
    assert status["healthy"] and not any(cert["warning"] for cert in status["certificates"])


def _expired_certificate(ca: certs.Authority) -> str:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    with mock.patch.object(certs, "_now", return_value=past):
        return certs.issue(ca, "local", dns=["local"], days=1).cert_pem


def test_status_shows_each_certificate_expiry(tls_cluster: RunningCluster) -> None:
    status = tls_cluster.cli_json("status")
    roles = sorted(cert["role"] for cert in status["certificates"])
    assert roles == ["CA", "host", "monitor", "replicator"], status["certificates"]
    assert all(cert["days_left"] > 30 and not cert["warning"] for cert in status["certificates"])
    warned = tls_cluster.cli("--set", "tls.warn_days=1000", "status")
    assert "warning:" in warned.stderr and "host.crt" in warned.stderr
