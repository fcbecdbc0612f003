"""Credential rotation on a running platform, with no restart of PostgreSQL and no failed request.

- `rotate certs`: new keys and certificates for this host from the same CA; PostgreSQL and
  Patroni's REST API reload them (Patroni's reload, PostgreSQL's SIGHUP), etcd reads its own at
  every new connection.
- `rotate ca`, three phases: `trust` (a new CA is made and trusted beside the old one; this host's
  certificates are re-signed by the old CA so that every server reloads its trust), `reissue`
  (this host's certificates from the new CA), `finish` (the old CA is no longer trusted). etcd
  reads its trusted CAs only when it starts: it is restarted in `trust` and `finish`, one member
  at a time across hosts, so etcd keeps its quorum. On one host the three phases run in one go;
  across hosts each phase runs on every host before the next phase starts anywhere.
- `rotate password app|superuser|patroni-api`: a new secret, stored first (state directory, and the
  cluster's bundle across hosts), then applied to the server and to every consumer on this host.
  The applications read their password file at each new connection; during the change it holds
  the new and the old password, so no connection fails; at the end only the new one works.
"""

from __future__ import annotations

import logging
import os
import secrets as tokens
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
from cryptography import x509
from psycopg import sql
from pydantic import SecretStr

from videodb.cluster.apps import write_app_files
from videodb.cluster.ha import is_paused
from videodb.cluster.haproxy_admin import reload_haproxy
from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.health import etcd_member_healthy
from videodb.cluster.hosts import reapply
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import connect_superuser
from videodb.cluster.preflight import find_toolchain
from videodb.cluster.render import ETCD_PROGRAM, READ_BACKEND
from videodb.cluster.served_cert import served_serial
from videodb.cluster.state import validate_haproxy
from videodb.cluster.supervisor import Supervisor, supervisord_pid
from videodb.cluster.tls import (
    authority,
    ca_material,
    client_context,
    issue_host_certs,
    load_ca,
    save_ca,
)
from videodb.config import LoadedSettings, NodeSpec, Settings
from videodb.errors import ClusterError, ConfigError, NotRunningError, PrerequisiteError
from videodb.layout import StateLayout, resolve_layout, service_user, tls_files
from videodb.secrets import (
    API_FILE,
    APP_FILE,
    SUPERUSER_FILE,
    CAMaterial,
    ClusterSecrets,
    load_secrets,
    read_bundle,
    write_bundle,
    write_pgpass,
    write_private,
)
from videodb.waiting import wait_for

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
RELOAD_WAIT_S = 60.0


class CAPhase(StrEnum):
    TRUST = "trust"
    REISSUE = "reissue"
    FINISH = "finish"


class PasswordKind(StrEnum):
    APP = "app"
    SUPERUSER = "superuser"
    PATRONI_API = "patroni-api"


@dataclass
class RotationResult:
    what: str
    steps: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    next_steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "rotated": self.what,
            "steps": self.steps,
            "elapsed_s": round(self.elapsed_s, 2),
            "next_steps": self.next_steps,
        }


# -- applying new files to the running servers of this host -------------------------------


def _running(layout: StateLayout) -> bool:
    return supervisord_pid(layout) is not None


def _serial(path_text: str) -> int:
    return x509.load_pem_x509_certificate(path_text.encode()).serial_number


def reload_certificates(
    settings: Settings, layout: StateLayout, api_password: str, progress: Progress
) -> list[str]:
    """Patroni reloads (its REST API takes the new certificate, PostgreSQL gets a SIGHUP);
    wait until both serve the new certificate. No restart."""
    files = tls_files(layout)
    serial = _serial(files.cert.read_text(encoding="utf-8"))
    api = PatroniAPI(settings, api_password)
    steps = []
    for node in settings.local_nodes():
        address = settings.node_address(node)
        api.send("POST", node, "/reload", {}, timeout=10)
        progress(f"{node.name}: reloading; waiting for PostgreSQL and the REST API to serve it")
        for port, postgres, what in (
            (node.port, True, "PostgreSQL"),
            (node.api_port, False, "Patroni's REST API"),
        ):

            def serves(address: str = address, port: int = port, postgres: bool = postgres) -> bool:
                return served_serial(address, port, postgres=postgres) == serial

            wait_for(
                serves,
                timeout=RELOAD_WAIT_S,
                what=f"{what} of {node.name} serving the new certificate",
                interval=0.2,
                hint=f"see 'platform.sh logs {node.name}'",
            )
        steps.append(f"{node.name}: PostgreSQL and the REST API serve certificate {serial:x}")
    return steps


def _members_report(
    api: PatroniAPI, settings: Settings, check: Callable[[dict[str, Any]], bool]
) -> bool:
    for node in settings.nodes:
        try:
            code, body = api.get(node, "/patroni")
        except OSError:
            continue  # a member that does not answer cannot hold anything up
        if code != 200 or not isinstance(body, dict) or not check(body):
            return False
    return True


def _kill_and_restart(supervisor: Supervisor, program: str) -> None:
    """Stop `program` with SIGKILL and have supervisord start it again.

    etcd, not Patroni, is why: on SIGTERM etcd 3.4 stops its gRPC server before its HTTP gateway,
    and for a few milliseconds the gateway answers Patroni's lease keep-alive with 503 "transport
    is closing" or 408. Patroni takes any such answer for a failed leader-lock update: even paused
    it stops calling itself the leader until its next loop, `/primary` answers 503 and HAProxy
    marks the master DOWN, cutting its sessions (CI, session 11). Killed, etcd only refuses or
    resets connections, which Patroni treats as an etcd outage, harmless while paused
    (`bench/etcd_stop_errors.py` counts both). etcd is crash-safe by design: its WAL is fsynced
    before any answer.
    """
    before = supervisor.program(program).pid
    supervisor.signal_program(program, "KILL")

    def started_again() -> bool:
        status = supervisor.program(program)
        if status.pid == before:
            return False
        if status.state in ("STOPPED", "FATAL"):  # supervisord gave up: start it ourselves
            supervisor.start_program(program)
            return False
        return status.running  # EXITED, BACKOFF, STARTING: autorestart is at work

    wait_for(started_again, timeout=RELOAD_WAIT_S, what=f"{program} started again", interval=0.1)


def restart_etcd(
    settings: Settings, layout: StateLayout, api_password: str, progress: Progress
) -> list[str]:
    """etcd reads its trusted CAs at start only: restart this host's member, and wait until it
    is back with a quorum.

    Patroni is paused meanwhile (DESIGN.md, traps): an etcd member that is starting answers
    requests with errors that Patroni takes for a failed leader-lock update, not for an etcd
    outage, so failsafe mode does not cover them and the primary would demote itself.
    """
    this = settings.this_host()
    if not this.etcd:
        return []
    api = PatroniAPI(settings, api_password)
    paused = is_paused(settings)
    if not paused:
        progress("pausing Patroni while etcd restarts (no demotion on a transient DCS error)")
        api.patch_config({"pause": True})
        wait_for(
            lambda: _members_report(api, settings, lambda doc: bool(doc.get("pause"))),
            timeout=RELOAD_WAIT_S,
            what="every Patroni member paused",
            interval=0.2,
        )
    progress("restarting this host's etcd member (it reads its trusted CAs only at start)")
    _kill_and_restart(Supervisor(layout), ETCD_PROGRAM)
    url = settings.etcd_client_url(this)
    wait_for(
        lambda: etcd_member_healthy(url, client_context(settings), 1.0),
        timeout=RELOAD_WAIT_S,
        what="this host's etcd member healthy again",
        interval=0.2,
        hint="see 'platform.sh logs etcd'",
    )
    back = time.time()
    wait_for(
        lambda: _members_report(
            api, settings, lambda doc: float(doc.get("dcs_last_seen") or 0) > back
        ),
        timeout=RELOAD_WAIT_S,
        what="every Patroni member talking to etcd again",
        interval=0.3,
    )
    if not paused:
        api.patch_config({"pause": False})
        wait_for(
            lambda: _members_report(api, settings, lambda doc: not doc.get("pause")),
            timeout=RELOAD_WAIT_S,
            what="every Patroni member resumed",
            interval=0.2,
        )
    return ["etcd: restarted with the new trusted CAs, healthy (Patroni paused meanwhile)"]


def reload_haproxy_trust(settings: Settings, layout: StateLayout) -> list[str]:
    if not settings.this_host().haproxy:
        return []
    tools, problems = find_toolchain(settings)
    if tools is None:
        raise PrerequisiteError("cannot reload HAProxy:\n  " + "\n  ".join(problems))
    validate_haproxy(tools, layout)
    reload_haproxy(layout)
    return ["HAProxy: reloaded gracefully (checks trust the new CA file; sessions stay)"]


# -- certificates ----------------------------------------------------------------------------


def rotate_certs(settings: Settings, layout: StateLayout, progress: Progress) -> RotationResult:
    began = time.monotonic()
    material = load_ca(settings, layout)
    progress(f"new keys and certificates for {settings.this_host().name} from the same CA")
    issue_host_certs(settings, layout, service_user(), material)
    result = RotationResult("certs", [f"new certificates in {tls_files(layout).root}"])
    if _running(layout):
        api_password = load_secrets(layout).api_password
        result.steps += reload_certificates(settings, layout, api_password, progress)
        result.steps.append("etcd: serves the new certificate at its next connection")
    else:
        result.steps.append("the platform is not running here: they apply at the next start")
    if settings.multi_host:
        result.next_steps.append(
            "each host has its own certificates: run 'rotate certs' on every host that needs it"
        )
    result.elapsed_s = time.monotonic() - began
    return result


def _phase_material(
    material: CAMaterial, phase: CAPhase, own: CAMaterial | None, scope: str, trusted_here: str
) -> CAMaterial:
    """The CA material after `phase`. Across hosts every host runs each phase on its copy of the
    bundle (the same transitions give the same result); `trusted_here` (this host's trust file)
    tells a phase another host already applied to a shared bundle from one not begun."""
    if phase is CAPhase.TRUST:
        if material.previous_pem:
            raise ConfigError(
                "this CA rotation is past its trust phase already (the new CA signs); run "
                "'rotate ca --phase finish' on every host to end it"
            )
        if material.next_cert_pem:
            return material  # made on another host: the bundle was copied here
        new = own or ca_material(scope)
        return CAMaterial(material.cert_pem, material.key_pem, "", new.cert_pem, new.key_pem)
    if phase is CAPhase.REISSUE:
        if material.next_cert_pem:
            return CAMaterial(material.next_cert_pem, material.next_key_pem, material.cert_pem)
        if material.previous_pem:
            return material
        raise ConfigError("no CA rotation is under way; begin with 'rotate ca --phase trust'")
    if material.next_cert_pem:
        raise ConfigError(
            "the new CA does not sign yet: run 'rotate ca --phase reissue' on every host first"
        )
    if not material.previous_pem and trusted_here == material.trust_pem:
        raise ConfigError("no CA rotation is under way; begin with 'rotate ca --phase trust'")
    return CAMaterial(material.cert_pem, material.key_pem)


def rotate_ca(
    settings: Settings,
    layout: StateLayout,
    progress: Progress,
    phase: CAPhase | None = None,
    own: CAMaterial | None = None,
) -> RotationResult:
    """Replace the cluster CA with no failed connection (phases: module docstring)."""
    began = time.monotonic()
    if phase is None and settings.multi_host:
        raise ConfigError(
            "across hosts the CA is replaced in three phases, each run on every host before the "
            "next: 'rotate ca --phase trust' (then copy the bundle made on the first host to "
            "the others before running it there), '--phase reissue', '--phase finish'; see "
            "docs/operator-guide.md, 'Certificates'"
        )
    phases = [phase] if phase is not None else list(CAPhase)
    result = RotationResult("ca" if phase is None else f"ca --phase {phase}")
    running = _running(layout)
    api_password = load_secrets(layout).api_password if running else ""
    user = service_user()
    for step in phases:
        trust_file = tls_files(layout).ca
        trusted_here = trust_file.read_text(encoding="utf-8") if trust_file.exists() else ""
        material = _phase_material(
            load_ca(settings, layout), step, own, settings.patroni.scope, trusted_here
        )
        authority(settings, layout, material)  # the signing CA must load
        save_ca(settings, layout, material)
        progress(f"phase {step}: {_PHASE_SAYS[step]}")
        issue_host_certs(settings, layout, user, material)
        result.steps.append(f"{step}: {_PHASE_SAYS[step]}")
        if not running:
            continue
        result.steps += reload_certificates(settings, layout, api_password, progress)
        if step in (CAPhase.TRUST, CAPhase.FINISH):
            result.steps += restart_etcd(settings, layout, api_password, progress)
            result.steps += reload_haproxy_trust(settings, layout)
    if not running:
        result.steps.append("the platform is not running here: the files apply at its start")
    if settings.multi_host and phase is CAPhase.TRUST and settings.secrets_bundle is not None:
        result.next_steps.append(
            f"copy {settings.secrets_bundle} to every other host (it holds the new CA), run "
            "'rotate ca --phase trust' there, then '--phase reissue' everywhere"
        )
    result.elapsed_s = time.monotonic() - began
    return result


_PHASE_SAYS = {
    CAPhase.TRUST: "a new CA trusted beside the old one (certificates still from the old)",
    CAPhase.REISSUE: "this host's certificates from the new CA (both still trusted)",
    CAPhase.FINISH: "the old CA no longer trusted",
}


# -- passwords -----------------------------------------------------------------------------


def _store(settings: Settings, layout: StateLayout, kind: PasswordKind, value: str) -> None:
    """The new secret is kept before it is applied: a crash halfway is finished by 'start'."""
    name = {
        PasswordKind.APP: APP_FILE,
        PasswordKind.SUPERUSER: SUPERUSER_FILE,
        PasswordKind.PATRONI_API: API_FILE,
    }[kind]
    write_private(layout.secret(name), value + "\n")
    if settings.secrets_bundle is not None:
        bundle = read_bundle(settings.secrets_bundle)
        changed = {
            PasswordKind.APP: bundle.with_passwords(app=value),
            PasswordKind.SUPERUSER: bundle.with_passwords(superuser=value),
            PasswordKind.PATRONI_API: bundle.with_passwords(api=value),
        }[kind]
        write_bundle(settings.secrets_bundle, changed)


def _refused(connect: Callable[[], object]) -> bool:
    try:
        connect()
    except psycopg.OperationalError as exc:
        return exc.sqlstate == "28P01" or "password authentication failed" in str(exc)
    return False


def rotate_password(
    loaded: LoadedSettings, layout: StateLayout, kind: PasswordKind, progress: Progress
) -> RotationResult:
    began = time.monotonic()
    settings = loaded.settings
    if not _running(layout):
        raise ClusterError(
            "the platform is not running here; start it first ('platform.sh start video'): "
            "a password is rotated on the running servers"
        )
    current = load_secrets(layout)
    result = RotationResult(f"password {kind}")
    new = tokens.token_urlsafe(32)
    if kind is PasswordKind.APP:
        _rotate_app(loaded, layout, current, new, progress, result)
    elif kind is PasswordKind.SUPERUSER:
        _rotate_superuser(settings, layout, current, new, progress, result)
    else:
        _rotate_api(settings, layout, current, new, progress, result)
    if settings.multi_host and settings.secrets_bundle is not None:
        result.next_steps.append(
            f"copy {settings.secrets_bundle} to every other host and run 'platform.sh --cluster "
            "FILE --host HOST start video' there: it applies the new secret without a restart"
        )
    result.elapsed_s = time.monotonic() - began
    return result


def _rotate_app(
    loaded: LoadedSettings,
    layout: StateLayout,
    current: ClusterSecrets,
    new: str,
    progress: Progress,
    result: RotationResult,
) -> None:
    settings = loaded.settings
    db = settings.database
    if "database.app_password" in loaded.sources:
        raise ConfigError(
            f"the application password is set by {loaded.sources['database.app_password']}; "
            "a rotation would be undone at the next start: change it there and run 'start "
            "video' again, or remove it there to let 'rotate password app' manage it"
        )
    app_hosts = [h.name for h in settings.topology_hosts() if h.apps]
    if app_hosts and not settings.this_host().apps:
        raise ConfigError(
            f"run 'rotate password app' on an application host ({', '.join(app_hosts)}): the "
            "applications there must accept the new password before the role gets it"
        )
    old = db.app_password.get_secret_value()
    _store(settings, layout, PasswordKind.APP, new)
    user = service_user()
    apps_here = settings.this_host().apps
    password_file = layout.app_password_file()
    if apps_here:
        progress("the applications accept the new and the old password meanwhile")
        write_private(password_file, f"{new}\n{old}\n")
        if not user.is_current:
            os.chown(password_file, user.uid, user.gid)
    primary = _set_role_password(settings, current, db.app_user, new)
    result.steps.append(f"role {db.app_user}: new password set on {primary.name}")
    if apps_here:
        # The read port reaches replicas: keep the old password accepted until every replica
        # has replayed the change, or a new reader connection to a lagging one would fail.
        progress("waiting for every replica to replay the new password")
        _wait_replayed(settings, current, primary)
    rotated = settings.model_copy(
        update={"database": db.model_copy(update={"app_password": SecretStr(new)})}
    )
    if apps_here:
        write_app_files(rotated, layout, user)  # the password file now holds the new one only
        result.steps.append("applications: the new password, read at their next connection")
    _check_switch(rotated, primary.name, db.app_user, db.name, new, old, result)
    others = [h for h in app_hosts if h != settings.this_host().name]
    if others:
        result.next_steps.append(
            f"the applications on {', '.join(others)} still use the old password for new "
            "connections: copy the bundle there and run 'start video' at once"
        )


def _set_role_password(
    settings: Settings, current: ClusterSecrets, role: str, password: str
) -> NodeSpec:
    """ALTER ROLE on the primary with a SCRAM verifier made here (no clear text in its logs)."""
    primary = PatroniAPI(settings).require_leader("to change the password on")
    with connect_superuser(settings, current, primary) as conn:
        verifier = conn.pgconn.encrypt_password(
            password.encode(), role.encode(), b"scram-sha-256"
        ).decode()
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier))
        )
    return primary


def _wait_replayed(settings: Settings, current: ClusterSecrets, primary: NodeSpec) -> None:
    with connect_superuser(settings, current, primary) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = str(row[0])
    for node in settings.nodes:
        if node.name == primary.name:
            continue

        def replayed(node: NodeSpec = node) -> bool:
            try:
                with connect_superuser(settings, current, node, timeout=2) as conn:
                    done = conn.execute(
                        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                    ).fetchone()
            except ClusterError:
                # Not reachable from here: done only if this host's read port sends it no reads
                # either (a node that is down serves none; it replays when it is back). One the
                # read port still routes to, we cannot see into: keep the old password until the
                # wait runs out.
                return not read_port_routes_to(settings, node.name)
            return bool(done and done[0])

        wait_for(
            replayed,
            timeout=RELOAD_WAIT_S,
            what=f"{node.name} replaying the password change",
            interval=0.1,
            hint="see 'platform.sh replication-status'",
        )


def read_port_routes_to(settings: Settings, name: str) -> bool:
    """This host's HAProxy has node `name` UP in its read backend (False without HAProxy here)."""
    if not settings.this_host().haproxy:
        return False
    try:
        servers = fetch_server_status(settings)
    except NotRunningError:
        return False
    return any(s.backend == READ_BACKEND and s.server == name and s.up for s in servers)


def _check_switch(
    settings: Settings,
    primary: str,
    user: str,
    dbname: str,
    new: str,
    old: str,
    result: RotationResult,
) -> None:
    node = settings.node(primary)

    def connect(password: str) -> Callable[[], object]:
        def attempt() -> object:
            with psycopg.connect(
                host=settings.node_address(node),
                port=node.port,
                user=user,
                password=password,
                dbname=dbname,
                connect_timeout=3,
                sslmode="verify-full",
                sslrootcert=str(tls_files(resolve_layout(settings)).ca),
            ):
                return None

        return attempt

    connect(new)()  # raises if the new password does not work
    if not _refused(connect(old)):
        raise ClusterError(f"the old password of {user} still works after the rotation")
    result.steps.append(f"checked: the new password logs in as {user}, the old one is refused")


def _rotate_superuser(
    settings: Settings,
    layout: StateLayout,
    current: ClusterSecrets,
    new: str,
    progress: Progress,
    result: RotationResult,
) -> None:
    db = settings.database
    old = current.superuser_password
    _store(settings, layout, PasswordKind.SUPERUSER, new)
    primary = _set_role_password(settings, current, db.superuser, new)
    result.steps.append(f"role {db.superuser}: new password set on {primary.name}")
    write_pgpass(layout, "*", db.superuser, new)
    progress("Patroni takes the new superuser password (reload; its connections stay)")
    result.steps += _reapply(settings, layout, current.api_password)
    _check_switch(settings, primary.name, db.superuser, "postgres", new, old, result)


def _reapply(settings: Settings, layout: StateLayout, api_password: str) -> list[str]:
    tools, problems = find_toolchain(settings)
    if tools is None:
        raise PrerequisiteError("cannot re-render the configuration:\n  " + "\n  ".join(problems))
    return reapply(settings, layout, service_user(), tools, api_password)


def _rotate_api(
    settings: Settings,
    layout: StateLayout,
    current: ClusterSecrets,
    new: str,
    progress: Progress,
    result: RotationResult,
) -> None:
    _store(settings, layout, PasswordKind.PATRONI_API, new)
    progress("Patroni's REST API takes the new password (reload)")
    result.steps += _reapply(settings, layout, current.api_password)
    old_api, new_api = PatroniAPI(settings, current.api_password), PatroniAPI(settings, new)
    for node in settings.local_nodes():

        def switched(node: NodeSpec = node) -> bool:
            try:
                new_api.send("POST", node, "/reload", {}, timeout=5)
            except ClusterError:
                return False
            return True

        wait_for(
            switched,
            timeout=RELOAD_WAIT_S,
            what=f"Patroni on {node.name} accepting the new REST API password",
            interval=0.3,
            hint=f"see 'platform.sh logs {node.name}'",
        )
        try:
            old_api.send("POST", node, "/reload", {}, timeout=5)
        except ClusterError as exc:
            if "401" not in str(exc):
                raise
        else:
            raise ClusterError(f"Patroni on {node.name} still accepts the old REST API password")
    result.steps.append("checked: the REST API accepts the new password and refuses the old one")
