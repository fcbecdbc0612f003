"""Rendering of the generated Patroni, HAProxy and supervisord configs (no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from videodb.cluster import render
from videodb.cluster.haproxy_stats import parse_stats_csv
from videodb.cluster.replication import slot_name
from videodb.config import Settings, load_settings
from videodb.layout import ServiceUser, StateLayout
from videodb.secrets import ClusterSecrets

SECRETS = ClusterSecrets("su-secret", "api-secret")
TOOLS = render.Toolchain(
    etcd=Path("/usr/bin/etcd"),
    haproxy=Path("/usr/sbin/haproxy"),
    pg_bin=Path("/usr/lib/postgresql/15/bin"),
    python=Path("/venv/bin/python3"),
)
LAYOUT = StateLayout(Path("/srv/state"))


def patroni(settings: Settings | None = None, index: int = 0) -> dict[str, Any]:
    s = settings or Settings()
    return render.patroni_config(s, LAYOUT, s.nodes[index], SECRETS, TOOLS)


def test_patroni_config_has_replication_rewind_and_guide_tuning() -> None:
    config = patroni()
    dcs = config["bootstrap"]["dcs"]
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["use_slots"] is True
    assert dcs["postgresql"]["parameters"]["wal_log_hints"] == "on"
    assert dcs["failsafe_mode"] is True
    local = config["postgresql"]
    assert local["listen"] == "127.0.0.1:5433"
    assert local["parameters"]["shared_buffers"] == "256MB"
    assert local["parameters"]["wal_buffers"] == "16MB"
    assert local["parameters"]["checkpoint_completion_target"] == 0.9
    assert local["parameters"]["max_wal_size"] == "1GB"
    assert local["parameters"]["effective_cache_size"] == "1GB"
    assert local["basebackup"] == [{"checkpoint": "fast"}]
    assert config["restapi"]["listen"] == "127.0.0.1:8008"


def test_changed_parameters_reach_every_node() -> None:
    s = load_settings(None, env={}, assignments=["postgresql.parameters.shared_buffers=512MB"])
    for i in range(2):
        params = patroni(s.settings, i)["postgresql"]["parameters"]
        assert params["shared_buffers"] == "512MB"


def test_pg_hba_allows_replication_to_replicator_only_by_certificate() -> None:
    rules = render.pg_hba(Settings())
    assert "hostssl replication replicator 127.0.0.1/32 cert" in rules
    assert all("trust" not in r and "md5" not in r for r in rules)
    reject = rules.index("host all replicator 0.0.0.0/0 reject")
    assert reject < rules.index("host all all 127.0.0.1/32 scram-sha-256")
    # the replication role has no password line at all
    assert [r for r in rules if "replication" in r.split()[1]] == [rules[3]]


def test_pg_hba_lets_the_monitoring_role_in_by_certificate_to_postgres_only() -> None:
    rules = render.pg_hba(Settings())
    assert "hostssl postgres videodb_monitor 127.0.0.1/32 cert" in rules
    assert "local all videodb_monitor reject" in rules
    reject = rules.index("host all videodb_monitor 0.0.0.0/0 reject")
    assert reject < rules.index("host all all 127.0.0.1/32 scram-sha-256")
    mine = [r for r in rules if "videodb_monitor" in r.split()]
    assert all(r.endswith((" cert", " reject")) for r in mine), mine


def test_every_link_is_tls_verified_against_the_cluster_ca() -> None:
    config = patroni()
    tls = "/srv/state/conf/tls"
    params = config["postgresql"]["parameters"]
    assert params["ssl"] == "on" and params["ssl_min_protocol_version"] == "TLSv1.2"
    assert params["ssl_ca_file"] == f"{tls}/ca.crt"
    auth = config["postgresql"]["authentication"]
    assert "password" not in auth["replication"]
    assert auth["replication"]["sslcert"] == f"{tls}/replicator.crt"
    for role in ("superuser", "replication", "rewind"):
        assert auth[role]["sslmode"] == "verify-full"
        assert auth[role]["sslrootcert"] == f"{tls}/ca.crt"
    assert config["restapi"]["verify_client"] == "optional"
    assert config["restapi"]["certfile"] == config["ctl"]["certfile"] == f"{tls}/host.crt"
    assert config["ctl"]["insecure"] is False
    assert config["etcd3"]["protocol"] == "https"
    assert config["etcd3"]["cert"] == f"{tls}/host.crt"
    haproxy = render.haproxy_config(Settings(), LAYOUT)
    checks = [ln for ln in haproxy.splitlines() if "default-server" in ln]
    assert checks and all(f"check-ssl verify required ca-file {tls}/ca.crt" in ln for ln in checks)
    assert "verify none" not in haproxy
    assert all(
        "verifyhost local" in ln
        for ln in haproxy.splitlines()
        if ln.strip().startswith("server ") and "postgres" in ln
    )


def test_rendered_patroni_yaml_round_trips_and_holds_secrets_only_in_auth() -> None:
    text = render.render_patroni(patroni())
    assert yaml.safe_load(text) == patroni()
    config = yaml.safe_load(text)
    for secret in ("su-secret", "api-secret"):
        assert secret in text  # each is rendered...
    # ...and only inside the authentication sections: without them, none is left.
    del config["restapi"]["authentication"]
    del config["postgresql"]["authentication"]
    rest = yaml.safe_dump(config)
    for secret in ("su-secret", "api-secret"):
        assert secret not in rest, secret


def test_postgresql_logs_rotate_by_weekday() -> None:
    params = patroni()["postgresql"]["parameters"]
    assert params["log_filename"] == "postgresql-%a.log"
    assert params["log_truncate_on_rotation"] == "on" and params["log_rotation_age"] == "1d"


def test_haproxy_routes_writes_by_primary_check_and_reads_by_read_only() -> None:
    cfg = render.haproxy_config(Settings(), LAYOUT)
    write = cfg.split("listen postgres_write")[1].split("listen postgres_read")[0]
    read = cfg.split("listen postgres_read")[1].split("listen stats")[0]
    assert "bind 127.0.0.1:5435" in write and "GET /primary" in write
    assert "bind 127.0.0.1:5436" in read and "option httpchk GET /read-only\n" in read
    strict = load_settings(
        None,
        env={},
        assignments=["haproxy.read_requires_streaming=true", "haproxy.read_max_lag=1MB"],
    )
    assert render.read_check_path(strict.settings) == "/readiness?lag=1MB"
    assert "balance roundrobin" in read
    for section in (write, read):
        assert "server postgres-video-master 127.0.0.1:5433 check port 8008" in section
        assert "server postgres-video-slave 127.0.0.1:5434 check port 8009" in section
        assert "on-marked-down shutdown-sessions" in section
        # Only the health check marks a server down; live errors just hurry the next check.
        assert "on-error fastinter" in section and "mark-down" not in section
    assert "bind 127.0.0.1:8404" in cfg and "stats uri /stats" in cfg
    assert "prometheus-exporter" in cfg
    assert "maxconn 2000" in cfg


def test_supervisor_runs_servers_as_service_user_and_can_hold_back_nodes() -> None:
    user = ServiceUser("postgres", 101, 104)
    text = render.supervisor_config(
        Settings(), LAYOUT, TOOLS, user, frozenset({"postgres-video-slave"})
    )
    # etcd, 2 nodes, HAProxy, 3 applications; the node exporter, 2 postgres exporters,
    # Prometheus and Alertmanager. The backup scheduler reads the secrets: the invoking user.
    assert text.count("user=postgres") == 12
    scheduler = text.split("[program:backup-scheduler]")[1].split("[program:")[0]
    assert "user=" not in scheduler and "videodb.backups.scheduler" in scheduler
    slave = text.split("[program:postgres-video-slave]")[1].split("[program:")[0]
    master = text.split("[program:postgres-video-master]")[1].split("[program:")[0]
    assert "autostart=false" in slave and "autostart=true" in master
    assert "autorestart=true" in master
    assert "su-secret" not in text
    upload = text.split("[program:upload]")[1].split("[program:")[0]
    assert (
        "/venv/bin/python3 -m videodb.services.serve upload --config /srv/state/conf/apps.json"
        in upload
    )
    assert "autostart=false" in upload  # started by 'start apps' once the schema is migrated
    # Patroni through the launcher that shortens its shutdown poll, configurable.
    assert (
        "command=/venv/bin/python3 -m videodb.cluster.patroni_launch --stop-poll=0.25 "
        "/srv/state/conf/postgres-video-master.yml" in master
    )
    patroni_default = Settings().model_copy(
        update={"patroni": Settings().patroni.model_copy(update={"stop_poll_s": 1.0})}
    )
    text = render.supervisor_config(patroni_default, LAYOUT, TOOLS, user, frozenset())
    assert "--stop-poll=1 " in text


def test_web_port_routes_by_path_and_method() -> None:
    cfg = render.haproxy_config(Settings(), LAYOUT)
    web = cfg.split("frontend web")[1]
    assert "bind 127.0.0.1:8080" in web and "mode http" in web
    assert "use_backend app_streaming if is_stream" in web
    assert "use_backend app_upload if is_collection is_post" in web
    assert "default_backend app_metadata" in web
    for name, port in (("upload", 8081), ("metadata", 8082), ("streaming", 8083)):
        backend = cfg.split(f"\nbackend app_{name}\n")[1].split("\nbackend ")[0]
        assert f"server {name} 127.0.0.1:{port} check" in backend
        assert "http-error status 503 content-type application/json" in backend


def test_etcd_listens_on_loopback() -> None:
    argv = render.etcd_command(Settings(), LAYOUT, TOOLS)
    assert "--listen-client-urls=https://127.0.0.1:2379" in argv
    assert "--listen-peer-urls=https://127.0.0.1:2380" in argv
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv


def test_slot_names_follow_patroni() -> None:
    assert slot_name("postgres-video-slave") == "postgres_video_slave"


def test_stats_csv_parsing_keeps_server_rows() -> None:
    csv_text = (
        "# pxname,svname,qcur,scur,stot,status,check_status,lastchg,ctime,rtime\n"
        "postgres_write,FRONTEND,,1,4,OPEN,,,,\n"
        "postgres_write,postgres-video-master,0,1,4,UP,L7OK,12,0,\n"
        "postgres_write,postgres-video-slave,0,0,0,DOWN,L7STS,12,0,\n"
        "postgres_write,BACKEND,0,1,4,UP,,12,0,\n"
        "stats,FRONTEND,,0,1,OPEN,,,,\n"
    )
    servers = parse_stats_csv(csv_text)
    assert [(s.server, s.up, s.current_sessions) for s in servers] == [
        ("postgres-video-master", True, 1),
        ("postgres-video-slave", False, 0),
    ]


def test_dynamic_config_follows_failover_and_replication_modes() -> None:
    default = render.dynamic_config(Settings())
    assert default["pause"] is False
    assert default["synchronous_mode"] is False and default["synchronous_mode_strict"] is False
    assert (default["ttl"], default["loop_wait"], default["retry_timeout"]) == (20, 1, 3)
    manual = load_settings(
        None,
        env={},
        assignments=["patroni.failover=manual", "patroni.replication=sync-strict"],
    ).settings
    config = render.dynamic_config(manual)
    assert config["pause"] is True
    assert config["synchronous_mode"] is True and config["synchronous_mode_strict"] is True
    bootstrap = patroni(manual)["bootstrap"]["dcs"]
    assert "pause" not in bootstrap  # a new cluster bootstraps unpaused; start pauses it after
    assert bootstrap["synchronous_mode_strict"] is True


def test_haproxy_runs_master_worker_for_seamless_reloads() -> None:
    text = render.supervisor_config(Settings(), LAYOUT, TOOLS, ServiceUser("postgres", 101, 104))
    haproxy = text.split("[program:haproxy-postgres]")[1]
    assert "haproxy -W -db -f" in haproxy
    assert "expose-fd listeners" in render.haproxy_config(Settings(), LAYOUT)
