"""The topology of hosts: one machine is the one-host case; a cluster file lists several."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from videodb.cluster import render
from videodb.cluster.drill import host_fault_commands
from videodb.config import LOCAL_HOST, Settings, load_settings
from videodb.errors import ConfigError
from videodb.layout import ServiceUser, StateLayout
from videodb.secrets import ClusterSecrets, with_bundle_password

EXAMPLE = Path(__file__).parents[2] / "examples" / "cluster.toml"
CLI = str(Path(sys.executable).parent / "videodb")
SECRETS = ClusterSecrets("su", "api")
TOOLS = render.Toolchain(
    etcd=Path("/usr/bin/etcd"),
    haproxy=Path("/usr/sbin/haproxy"),
    pg_bin=Path("/usr/lib/postgresql/15/bin"),
    python=Path("/venv/bin/python3"),
)
LAYOUT = StateLayout(Path("/srv/state"))
ME = ServiceUser("me", 1000, 1000)


def cluster(host: str | None = None, *extra: str) -> Settings:
    sets = ["secrets_bundle=/nonexistent/cluster.toml.secrets", *extra]
    if host:
        sets.append(f"host={host}")
    return load_settings(EXAMPLE, env={}, assignments=sets, require_file=True).settings


def test_one_machine_is_the_one_host_case() -> None:
    s = Settings()
    assert [h.name for h in s.topology_hosts()] == [LOCAL_HOST]
    assert s.this_host().address == "127.0.0.1" and not s.multi_host
    assert [n.name for n in s.local_nodes()] == [n.name for n in s.nodes]
    assert s.all_ports()["haproxy write"] == 5435
    assert render.etcd_member_name(s, s.this_host()) == "video-etcd"  # unchanged name


def test_the_example_cluster_file_is_valid_and_places_each_node() -> None:
    s = cluster("db2")
    assert s.multi_host and s.this_host().address == "10.0.0.12"
    assert [n.name for n in s.local_nodes()] == ["postgres-video-2"]
    assert s.node_address(s.node("postgres-video-3")) == "10.0.0.13"
    assert [h.name for h in s.etcd_hosts()] == ["db1", "db2", "db3"]
    # The same port on different hosts is fine.
    assert {n.port for n in s.nodes} == {5433}


def test_a_command_on_several_hosts_needs_to_know_which_host_it_is() -> None:
    with pytest.raises(ConfigError, match="--host NAME"):
        cluster().this_host()
    with pytest.raises(ConfigError, match=r"'db9' .*not one of"):
        cluster("db9")


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("nodes.0.host=nowhere", "host 'nowhere' is not one of"),
        ("hosts.1.address=10.0.0.11", "host addresses must be unique"),
        ("hosts.0.address=db-one", "is not an IP address"),
        ("nodes.1.host=db1", "port 5433 is given to both .* on host db1"),
    ],
)
def test_a_bad_topology_is_refused_with_what_was_seen(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cluster("db1", assignment)


def test_a_cluster_needs_its_secrets_bundle() -> None:
    with pytest.raises(ConfigError, match="--cluster FILE"):
        load_settings(EXAMPLE, env={}, require_file=True)


def test_each_host_renders_only_its_part_with_host_addresses() -> None:
    s = cluster("db1")
    etcd = render.etcd_command(s, LAYOUT, TOOLS)
    assert "--advertise-client-urls=https://10.0.0.11:2379" in etcd
    assert (
        "--initial-cluster=video-etcd-db1=https://10.0.0.11:2380,"
        "video-etcd-db2=https://10.0.0.12:2380,video-etcd-db3=https://10.0.0.13:2380"
    ) in etcd
    patroni = render.patroni_config(s, LAYOUT, s.node("postgres-video-1"), SECRETS, TOOLS)
    assert patroni["postgresql"]["connect_address"] == "10.0.0.11:5433"
    assert patroni["postgresql"]["listen"] == "10.0.0.11,127.0.0.1:5433"
    assert patroni["restapi"]["connect_address"] == "10.0.0.11:8008"
    assert patroni["etcd3"]["hosts"] == ["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"]
    supervisor = render.supervisor_config(s, LAYOUT, TOOLS, ME)
    assert "[program:etcd]" in supervisor and "[program:postgres-video-1]" in supervisor
    assert "[program:postgres-video-2]" not in supervisor
    assert "[program:haproxy-postgres]" not in supervisor and "[program:upload]" not in supervisor


def test_the_application_host_runs_haproxy_over_every_node_and_the_apps() -> None:
    s = cluster("app1")
    supervisor = render.supervisor_config(s, LAYOUT, TOOLS, ME)
    assert "[program:etcd]" not in supervisor and "[program:postgres-video-1]" not in supervisor
    assert "[program:haproxy-postgres]" in supervisor and "[program:upload]" in supervisor
    haproxy = render.haproxy_config(s, LAYOUT)
    assert "bind 10.0.0.21:5435" in haproxy
    assert "option httpchk GET /readiness?lag=16MB" in haproxy  # streaming replicas only
    for i, address in enumerate(("10.0.0.11", "10.0.0.12", "10.0.0.13"), start=1):
        assert f"server postgres-video-{i} {address}:5433 check port 8008" in haproxy


def test_pg_hba_admits_the_cluster_hosts_only() -> None:
    rules = render.pg_hba(cluster("db1"))
    for address in ("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.21"):
        assert f"hostssl replication replicator {address}/32 cert" in rules
        assert f"hostssl all all {address}/32 scram-sha-256" in rules
    # nothing but loopback is admitted without TLS
    plain = [r for r in rules if r.startswith("host ") and not r.endswith("reject")]
    assert plain == ["host all all 127.0.0.1/32 scram-sha-256"]
    assert rules[-2:] == ["host all all 0.0.0.0/0 reject", "host all all ::/0 reject"]
    assert not any("md5" in r or "trust" in r for r in rules)


def test_cluster_init_makes_one_private_bundle_and_never_replaces_it(tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLE, cluster_file)
    first = run_cli("cluster", "init", str(cluster_file), "--json")
    assert first.returncode == 0, first
    made = json.loads(first.stdout)
    bundle = Path(made["secrets"])
    assert bundle == tmp_path / "cluster.toml.secrets"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert made["hosts"] == ["db1", "db2", "db3", "app1"]
    assert all("--host" in c and "start video" in c for c in made["commands"])
    content = bundle.read_text()
    again = run_cli("cluster", "init", str(cluster_file))
    assert again.returncode == 2 and "exists already" in again.stderr
    assert bundle.read_text() == content  # the running cluster's secrets are kept
    # Every host reads the same application password from the bundle.
    loaded = load_settings(
        cluster_file, env={}, assignments=[f"secrets_bundle={bundle}"], require_file=True
    )
    password = with_bundle_password(loaded).settings.database.app_password.get_secret_value()
    assert password == json.loads(content)["app_password"]


def test_cluster_init_adds_a_ca_to_a_bundle_made_before_tls(tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.toml"
    shutil.copy(EXAMPLE, cluster_file)
    bundle = tmp_path / "cluster.toml.secrets"
    old = {"superuser_password": "su", "api_password": "api", "app_password": "app"}
    bundle.write_text(json.dumps(old))
    result = run_cli("cluster", "init", str(cluster_file))
    assert result.returncode == 0, result
    data = json.loads(bundle.read_text())
    assert {k: data[k] for k in old} == old  # the running cluster's passwords are kept
    assert "BEGIN CERTIFICATE" in data["ca_cert"] and "PRIVATE KEY" in data["ca_key"]
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600


def test_a_bad_cluster_file_is_refused_by_cluster_init(tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(EXAMPLE.read_text().replace('host = "db3"', 'host = "db9"'))
    result = run_cli("cluster", "init", str(cluster_file))
    assert result.returncode == 2, result
    assert "'db9' is not one of" in result.stderr
    assert not (tmp_path / "cluster.toml.secrets").exists()


def test_a_host_fault_needs_its_commands_and_another_host() -> None:
    s = cluster("app1")
    with pytest.raises(ConfigError, match=r"drill\.isolate_command, drill\.heal_command"):
        host_fault_commands(s, "isolate-host", "db1")
    s = cluster("app1", "drill.lose_command=echo off {host} {address}", "drill.restore_command=on")
    assert host_fault_commands(s, "lose-host", "db2") == ("echo off db2 10.0.0.12", "on")
    with pytest.raises(ConfigError, match="cut off the host the drill runs on"):
        host_fault_commands(
            cluster("db2", "drill.lose_command=x", "drill.restore_command=y"), "lose-host", "db2"
        )
    with pytest.raises(ConfigError, match="run it against a cluster file"):
        host_fault_commands(Settings(), "lose-host", LOCAL_HOST)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEODB", "DB_"))}
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )
