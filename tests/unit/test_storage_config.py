"""The [storage] settings and SeaweedFS's programs rendered from them (no servers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from videodb.cluster import seaweedfs
from videodb.cluster.render import Toolchain, supervisor_config
from videodb.config import Settings, load_settings
from videodb.errors import ConfigError
from videodb.layout import ServiceUser, StateLayout
from videodb.secrets import CAMaterial, ClusterSecrets, SecretsBundle, write_bundle


def settings_from(tmp_path: Path, text: str, sets: list[str] | None = None) -> Settings:
    path = tmp_path / "platform.toml"
    path.write_text(text)
    return load_settings(path, env={}, require_file=True, assignments=sets or []).settings


def test_s3_needs_an_endpoint_and_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.endpoint, storage\.access_key"):
        settings_from(tmp_path, '[storage]\nbackend = "s3"\n')


def test_volume_ports_need_as_many_grpc_ports(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="as many entries"):
        settings_from(tmp_path, "[storage]\nvolume_ports = [1, 2, 3]\n")


def test_seaweedfs_ports_collide_with_nothing_and_move_with_the_offset(tmp_path: Path) -> None:
    s = settings_from(tmp_path, '[storage]\nbackend = "seaweedfs"\n', ["port_offset=100"])
    ports = s.all_ports()
    assert ports["seaweedfs master"] == 9433 and ports["seaweedfs volume 2"] == 8192
    assert ports["seaweedfs s3"] == 8433 and ports["seaweedfs filer grpc"] == 18988
    with pytest.raises(ConfigError, match="given to both"):
        settings_from(tmp_path, '[storage]\nbackend = "seaweedfs"\ns3_port = 8080\n')
    # The local backend runs no server: its ports are not this host's.
    local = settings_from(tmp_path, "")
    assert not any(k.startswith("seaweedfs") for k in local.all_ports())


def test_seaweedfs_on_one_machine_runs_two_volume_servers_and_its_gateway(tmp_path: Path) -> None:
    s = settings_from(tmp_path, '[storage]\nbackend = "seaweedfs"\n')
    layout = StateLayout(tmp_path / "state")
    programs = {p.name: p.argv for p in seaweedfs.programs(s, layout, s.this_host())}
    assert set(programs) == {
        "seaweedfs-master",
        "seaweedfs-volume-1",
        "seaweedfs-volume-2",
        "seaweedfs-filer",
        "seaweedfs-s3",
    }
    assert "-defaultReplication=001" in programs["seaweedfs-master"]
    assert "-mserver=127.0.0.1:9333.19333" in programs["seaweedfs-volume-2"]
    assert "-port=8092" in programs["seaweedfs-volume-2"]
    assert "-filer=127.0.0.1:8888.18888" in programs["seaweedfs-s3"]
    assert "-port.iceberg=0" in programs["seaweedfs-s3"]  # no port of its own choosing
    user = ServiceUser("postgres", os.getuid(), os.getgid())
    tools = Toolchain(Path("/e"), Path("/h"), Path("/pg"), Path("/py"))
    text = supervisor_config(s, layout, tools, user)
    assert "[program:seaweedfs-s3]" in text and "[program:seaweedfs-volume-1]" in text
    local = supervisor_config(settings_from(tmp_path, ""), layout, tools, user)
    assert "[program:seaweedfs" not in local


def cluster_text(bundle: Path, storage: str, app_hosts: int = 1) -> str:
    hosts = "".join(
        f'[[hosts]]\nname = "db{i}"\naddress = "10.9.0.{i}"\napps = false\nhaproxy = false\n'
        for i in (1, 2, 3)
    )
    hosts += "".join(
        f'[[hosts]]\nname = "app{i}"\naddress = "10.9.0.{10 + i}"\netcd = false\n'
        for i in range(1, app_hosts + 1)
    )
    nodes = "".join(
        f'[[nodes]]\nname = "n{i}"\nhost = "db{i}"\nport = 5433\napi_port = 8008\n' for i in (1, 2)
    )
    return f'secrets_bundle = "{bundle}"\n{hosts}{nodes}[storage]\n{storage}'


def test_seaweedfs_across_hosts_keeps_every_object_on_two_hosts(tmp_path: Path) -> None:
    bundle = tmp_path / "c.toml.secrets"
    ca = CAMaterial("cert", "key")
    write_bundle(bundle, SecretsBundle(ClusterSecrets("a", "b"), "c", ca, "s3-secret"))
    s = settings_from(tmp_path, cluster_text(bundle, 'backend = "seaweedfs"\n', 2), ["host=db2"])
    layout = StateLayout(tmp_path / "state")
    db2 = {p.name: p.argv for p in seaweedfs.programs(s, layout, s.host_spec("db2"))}
    assert set(db2) == {"seaweedfs-master", "seaweedfs-volume-1"}  # one volume server a host
    assert "-defaultReplication=010" in db2["seaweedfs-master"]  # two racks: two hosts
    masters = "10.9.0.1:9333.19333,10.9.0.2:9333.19333,10.9.0.3:9333.19333"
    assert f"-peers={masters}" in db2["seaweedfs-master"]
    assert "-rack=db2" in db2["seaweedfs-volume-1"]
    app = {p.name for p in seaweedfs.programs(s, layout, s.host_spec("app1"))}
    assert app == {"seaweedfs-filer", "seaweedfs-s3"}
    assert "seaweedfs volume 2" not in s.all_ports() and "seaweedfs volume 1" in s.all_ports()
    store = seaweedfs.store_settings(s, layout, tmp_path / "videos")
    assert store.s3 is not None and store.s3.secret_key.get_secret_value() == "s3-secret"
    assert store.s3.settle_s > 0  # another host's filer shares new objects a moment later


def test_a_bundle_without_the_storage_secret_says_how_to_add_it(tmp_path: Path) -> None:
    bundle = tmp_path / "c.toml.secrets"
    write_bundle(bundle, SecretsBundle(ClusterSecrets("a", "b"), "c", CAMaterial("c", "k")))
    s = settings_from(tmp_path, cluster_text(bundle, 'backend = "seaweedfs"\n'), ["host=db1"])
    with pytest.raises(ConfigError, match="cluster init CLUSTER_FILE' once more"):
        seaweedfs.s3_secret(s, StateLayout(tmp_path / "state"))


def test_local_storage_with_two_application_hosts_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "c.toml.secrets"
    with pytest.raises(ConfigError, match=r'use "seaweedfs".*or "s3"'):
        settings_from(tmp_path, cluster_text(bundle, "", 2))
