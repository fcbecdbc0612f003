"""The state directory's generated files: Patroni's, HAProxy's and supervisord's configuration,
the archive script, secrets and the directories the servers write, all from the settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from videodb.backup_repo import ready_repo, repo_for
from videodb.cluster import monitoring, render, seaweedfs
from videodb.cluster.tls import ensure_host_certs, same_cluster
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import ServiceUser, StateLayout
from videodb.runner import run_tool
from videodb.secrets import (
    ClusterSecrets,
    ensure_secrets,
    install_bundle,
    read_bundle,
    write_pgpass,
    write_private,
)
from videodb.wal_archive import archive_script


def _own(path: Path, user: ServiceUser, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if not user.is_current:
        os.chown(path, user.uid, user.gid)


def _write_service_file(path: Path, text: str, user: ServiceUser) -> None:
    write_private(path, text)
    if not user.is_current:
        os.chown(path, user.uid, user.gid)


def is_fresh(settings: Settings, layout: StateLayout) -> bool:
    """No node of this host has a data directory yet: a new cluster, or a new host in one."""
    return not any(
        (layout.node_data(n.name) / "PG_VERSION").exists() for n in settings.local_nodes()
    )


def nodes_to_hold_back(settings: Settings, layout: StateLayout) -> frozenset[str]:
    """Nodes to start only once a primary leads, so that they clone from it.

    A new cluster is bootstrapped by the first node (the guide's master) alone. In an existing
    cluster the nodes with data start together, so that Patroni elects the most advanced one and
    no acknowledged write is rewound away; a node without data (after a restore, or added) waits,
    or with an empty DCS it could bootstrap a cluster of its own.

    Only this host's nodes are considered: across hosts, Patroni's initialize key in etcd decides
    which host's node bootstraps, and the others clone from it.
    """
    local = settings.local_nodes()
    if is_fresh(settings, layout):
        return frozenset(n.name for n in local[1:])
    return frozenset(
        n.name for n in local if not (layout.node_data(n.name) / "PG_VERSION").exists()
    )


def prepare_state(
    settings: Settings,
    layout: StateLayout,
    user: ServiceUser,
    tools: render.Toolchain,
    held_back: frozenset[str] = frozenset(),
    etcd_join: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ClusterSecrets:
    """Create the directories and (re)write every generated file from the settings."""
    layout.root.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.root, 0o755)
    for public in (layout.conf, layout.logs, layout.run):
        public.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.conf, 0o755)
    # The WAL archive is written by PostgreSQL's OS user, on every node (archive_mode = always).
    repo = repo_for(settings, layout)
    try:
        ready_repo(settings, layout, user)
    except OSError as exc:
        raise ClusterError(
            f"backup repository {repo.root} cannot be prepared for the '{user.name}' user "
            f"({exc.strerror}); choose another with --set backup.repo_dir=PATH"
        ) from exc
    script = layout.archive_script()
    script.write_text(archive_script(repo), encoding="utf-8")
    os.chmod(script, 0o755)
    _own(layout.data, user, 0o700)
    _own(layout.service_run, user, 0o700)
    for node in settings.local_nodes():
        _own(layout.postgres_log_dir(node.name), user, 0o750)
    if settings.secrets_bundle is not None:
        bundle = read_bundle(settings.secrets_bundle)
        # A rotated password from the same cluster (its CA is one this host trusts) replaces
        # the old one; another cluster's secrets are refused.
        install_bundle(layout, bundle, replace=same_cluster(layout, bundle))
    secrets = ensure_secrets(layout)
    ensure_host_certs(settings, layout, user, progress)
    write_pgpass(layout, "*", settings.database.superuser, secrets.superuser_password)
    for node in settings.local_nodes():
        config = render.patroni_config(settings, layout, node, secrets, tools)
        _write_service_file(layout.patroni_config(node.name), render.render_patroni(config), user)
    if settings.this_host().haproxy:
        haproxy = render.haproxy_config(settings, layout)
        _write_service_file(layout.haproxy_config(), haproxy, user)
        state = render.haproxy_state_file(layout)
        if not state.exists():  # nothing saved yet: an empty state of format version 1
            state.write_text("1\n", encoding="utf-8")
    seaweedfs.prepare(settings, layout, user)
    monitoring.prepare(settings, layout, user)
    layout.supervisor_config().write_text(
        render.supervisor_config(settings, layout, tools, user, held_back, etcd_join),
        encoding="utf-8",
    )
    return secrets


def validate_haproxy(tools: render.Toolchain, layout: StateLayout) -> None:
    if not layout.haproxy_config().exists():
        return  # this host runs no HAProxy
    result = run_tool(
        [str(tools.haproxy), "-c", "-f", str(layout.haproxy_config())],
        what="haproxy -c",
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(
            f"generated HAProxy config {layout.haproxy_config()} is invalid: "
            f"{(result.stderr or result.stdout).strip()}"
        )
