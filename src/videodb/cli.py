"""The command line: parse, call the library, render. The only place with exit codes."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar, cast

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from videodb import __version__, cli_log, cli_monitoring, crash, pgenv, render_text
from videodb.backup_repo import repo_for
from videodb.backups import logical as backups_logical
from videodb.backups import physical as backups_physical
from videodb.backups import prune as backups_prune
from videodb.backups import restore as backups_restore
from videodb.backups import verify as backups_verify
from videodb.backups import videos as backups_videos
from videodb.backups.archiver import archiver_status
from videodb.backups.progress import size
from videodb.backups.schedule import read_runs, read_schedule
from videodb.cluster import (
    apps,
    drill,
    ha,
    hosts,
    lifecycle,
    members,
    promote,
    replication,
    rotate,
    service_unit,
    status,
    tools,
    topology,
)
from videodb.cluster.haproxy_stats import fetch_server_status, stats_url
from videodb.cluster.tls import ca_material
from videodb.config import LoadedSettings, Settings, default_config_file, load_settings, redacted
from videodb.config_toml import render_config
from videodb.errors import ConfigError, NotRunningError, VideoDBError
from videodb.layout import StateLayout, project_home, resolve_layout
from videodb.platform_lock import platform_lock
from videodb.secrets import (
    bundle_path,
    create_bundle,
    load_secrets,
    read_bundle,
    with_bundle_password,
    write_bundle,
)

log = logging.getLogger("videodb.cli")

app = typer.Typer(
    name="platform.sh",
    help=(
        "The video platform's replicated PostgreSQL: etcd, two Patroni-managed PostgreSQL 15 "
        "nodes and HAProxy (write 5435, read 5436, stats 8404); the upload, metadata and "
        "streaming applications (the page on 8080); backups with continuous WAL archiving and "
        "point-in-time recovery. Everything on 127.0.0.1; across several hosts with "
        "--cluster FILE --host NAME (see 'cluster init')."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click help: no <bool> on flags, choices in the usage
    epilog=(
        "\b\nExamples:\n"
        "  platform.sh start video                  start everything, wait until healthy\n"
        "  platform.sh status                       every process, its role and health\n"
        "  platform.sh replication-status --json    lag per replica, for scripts\n"
        "  platform.sh --port-offset 100 start video   a second platform beside the first\n"
        "  platform.sh --cluster c.toml --host db1 start video   this host's part of a cluster\n"
        "  platform.sh COMMAND --help               one command's options and examples"
    ),
)
# Tables stay readable when piped (rich would otherwise assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Do not ask for confirmation.")]

# The choices of the flags that take one (Click checks them before a command runs).
StartTarget = Literal["video", "apps"]
StopTarget = Literal["all", "video", "apps"]
FailoverChoice = Literal["automatic", "manual"]
ReplicationChoice = Literal["async", "sync", "sync-strict"]
ProfileChoice = Literal["fast", "default", "safe"]
FaultChoice = Literal[
    "kill-postgres", "kill-node", "freeze", "switchover", "isolate-host", "lose-host"
]
OnOff = Literal["on", "off"]


def examples(*lines: str) -> str:
    """A command's epilog: example invocations, kept as written (\\b stops Click's rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def confirm(question: str) -> None:
    """Ask before a destructive step; with no terminal to ask on, refuse and name --force."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} -- no terminal to confirm on; pass --force")
    typer.confirm(question, abort=True)


@dataclass
class Context:
    config_file: Path | None
    state_dir: Path | None
    assignments: list[str] = field(default_factory=list)
    flag_names: dict[str, str] = field(default_factory=dict)  # key -> the flag that set it
    cluster_file: Path | None = None  # --cluster FILE: the config, with its secrets bundle
    _loaded: LoadedSettings | None = None

    def _load(self) -> LoadedSettings:
        assignments = list(self.assignments)
        if self.state_dir is not None:
            assignments.append(f"state_dir={self.state_dir}")
        if self.cluster_file is not None:
            bundle = bundle_path(self.cluster_file)
            assignments.insert(0, f"secrets_bundle={bundle}")
        file = self.cluster_file or self.config_file or default_config_file(project_home())
        loaded = load_settings(
            file,
            assignments=assignments,
            require_file=self.config_file is not None or self.cluster_file is not None,
            flag_names=self.flag_names,
        )
        return with_bundle_password(loaded)

    def loaded(self) -> LoadedSettings:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The state directory's lock (loaded apart: a command may still add its own flags),
        and what the command does logged in its logs/cli.log."""
        root = resolve_layout(self._load().settings).root
        with platform_lock(root):
            cli_log.log_to(StateLayout(root).logs)
            yield

    def layout(self) -> StateLayout:
        return resolve_layout(self.loaded().settings)

    def settings(self) -> Settings:
        """The config's settings plus the replicas added with add-replica."""
        return topology.with_extra_nodes(self.loaded().settings, self.layout())

    def require_running(self) -> None:
        """Refuse to ask the cluster anything unless this state directory's platform runs: its
        ports may be held by another cluster (or anything else) while ours is stopped."""
        layout = self.layout()
        if not lifecycle.is_running(layout):
            raise NotRunningError(
                f"the platform in state directory {layout.root} is not running; start it with "
                "'platform.sh start video'"
            )


CommandFn = TypeVar("CommandFn", bound=Callable[..., None])


def mutating(fn: CommandFn) -> CommandFn:
    """A command that changes the platform: it runs holding the state directory's lock, and a
    second one started meanwhile is refused, naming this one (see platform_lock)."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> None:
        ctx = kwargs["ctx"] if "ctx" in kwargs else args[0]
        with _ctx(ctx).locked():
            fn(*args, **kwargs)

    return cast(CommandFn, locked)


def _ctx(ctx: typer.Context) -> Context:
    obj = ctx.obj
    assert isinstance(obj, Context)
    return obj


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _fail(exc: VideoDBError) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    for note in getattr(exc, "__notes__", []):
        err.print(f"  {escape(note)}", highlight=False, soft_wrap=True)
    sys.exit(exc.exit_code)


def _progress(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr with the seconds elapsed (silent when output is --json)."""
    began = time.monotonic()

    def progress(message: str) -> None:
        if not quiet:
            err.print(f"[dim]{time.monotonic() - began:6.1f}s[/] {message}", highlight=False)

    return progress


def _version(value: bool) -> None:
    if value:
        out.print(f"videodb {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            envvar="VIDEODB_CONFIG",
            help="TOML config file (default: config/platform.toml in the checkout).",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            help="Where data, logs, configs and secrets live (default: .state in the checkout; "
            "env VIDEODB_STATE_DIR).",
        ),
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one config key, e.g. --set haproxy.write_port=6435 (repeatable). "
            "Environment: VIDEODB__HAPROXY__WRITE_PORT=6435; DB_USERNAME / DB_PASSWORD.",
        ),
    ] = None,
    port_offset: Annotated[
        int | None,
        typer.Option(
            "--port-offset",
            metavar="N",
            min=0,
            help="Add N to every port and use the state directory .state-N: a second platform "
            "beside the first, e.g. --port-offset 100 (write port 5535). Env VIDEODB_PORT_OFFSET.",
        ),
    ] = None,
    cluster: Annotated[
        Path | None,
        typer.Option(
            "--cluster",
            metavar="FILE",
            help="A cluster file (TOML with [[hosts]]) for a platform across several hosts; its "
            "shared secrets are read from FILE.secrets ('platform.sh cluster init FILE').",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="NAME",
            help="Which host of the cluster file this machine is (its part is what 'start' "
            "starts here).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback of an unexpected error.")
    ] = False,
) -> None:
    sets = list(assignments or [])
    flag_names: dict[str, str] = {}
    if port_offset is not None:
        sets.append(f"port_offset={port_offset}")
        flag_names["port_offset"] = "--port-offset"
    if host is not None:
        sets.append(f"host={host}")
        flag_names["host"] = "--host"
    if cluster is not None and config is not None:
        raise typer.BadParameter("give --cluster FILE or --config FILE, not both")
    ctx.obj = Context(config, state_dir, sets, flag_names, cluster)


@app.command(
    epilog=examples(
        "platform.sh start video",
        "platform.sh start video --replication sync --profile default",
        "platform.sh start video --failover manual   # only promote-slave promotes",
        "platform.sh start apps",
        "platform.sh --port-offset 100 start video   # a second platform: write port 5535",
    )
)
@mutating
def start(
    ctx: typer.Context,
    target: Annotated[
        StartTarget,
        typer.Argument(
            help="'video': the cluster, then the applications (unless apps.autostart is false); "
            "'apps': only the applications, on a running cluster."
        ),
    ] = "video",
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait for a healthy cluster.")
    ] = 180.0,
    failover: Annotated[
        FailoverChoice | None,
        typer.Option(
            help="automatic: Patroni promotes by itself; manual: only promote-slave does. "
            "Applied live to a running cluster."
        ),
    ] = None,
    replication: Annotated[
        ReplicationChoice | None,
        typer.Option(
            help="async (the guide's), sync, or sync-strict (writes block with no sync standby). "
            "Applied live to a running cluster."
        ),
    ] = None,
    profile: Annotated[
        ProfileChoice | None,
        typer.Option(
            help="Patroni timings: fast (ttl 20), default (30), safe (60). Applied live to a "
            "running cluster."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start etcd, both PostgreSQL nodes (Patroni) and HAProxy (and SeaweedFS with
    storage.backend = "seaweedfs"), wait until healthy, migrate the schema, then start the
    upload, metadata and streaming applications and wait until ready.

    With --cluster FILE --host NAME: only that host's part. On a running platform, a changed
    config or cluster file is re-applied without a restart; newly configured servers are
    started, and the applications restarted if what they run with changed."""
    c = _ctx(ctx)
    given = set()
    for key, value in (("failover", failover), ("replication", replication), ("profile", profile)):
        if value is not None:
            c.assignments.append(f"patroni.{key}={value}")
            c.flag_names[f"patroni.{key}"] = f"--{key}"
            given.add(key)
    settings = c.settings()
    layout = c.layout()
    progress = _progress(as_json)
    if target == "apps":
        states = apps.start_apps(settings, layout, progress=progress)
        if as_json:
            _print_json({"apps": [asdict(s) for s in states]})
        else:
            for s in states:
                out.print(f"{s.name}: {s.state}, pid {s.pid}, port {s.port}: {s.detail}")
            out.print(f"the page: http://{settings.address}:{settings.apps.web_port}/")
        return

    result = lifecycle.start(
        settings, layout, timeout=timeout, progress=progress, flags=frozenset(given)
    )
    states = []
    if settings.apps.autostart and settings.this_host().apps:
        states = apps.start_apps(settings, layout, progress=progress)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if as_json:
        _print_json(
            {
                "already_running": result.already_running,
                "changes": result.changes,
                "state_dir": str(result.state_dir),
                "elapsed_s": round(result.elapsed_s, 2),
                "primary": result.primary,
                "ports": settings.all_ports(),
                "apps": [asdict(s) for s in states],
            }
        )
        return
    if result.already_running and result.changes:
        out.print(
            f"already running (state {result.state_dir}); applied without a restart: "
            + "; ".join(result.changes)
        )
    elif result.already_running and given:
        asked = ", ".join(
            f"--{k} {v}"
            for k, v in (("failover", failover), ("replication", replication), ("profile", profile))
            if v is not None
        )
        out.print(f"already running (state {result.state_dir}); {asked} already in effect")
    elif result.already_running:
        out.print(f"already running (state {result.state_dir}); nothing changed")
    else:
        out.print(f"cluster healthy in {result.elapsed_s:.1f} s; primary is {result.primary}")
    if states:
        out.print(
            f"applications ready; the page: http://{settings.address}:{settings.apps.web_port}/"
        )
    out.print(render_text.ports_table(settings, result.primary))


@app.command()
@mutating
def stop(
    ctx: typer.Context,
    target: Annotated[
        StopTarget,
        typer.Argument(help="all or video: everything; apps: only the applications."),
    ] = "all",
    as_json: JsonOpt = False,
) -> None:
    """Stop every process of the platform (or only the applications). The data stays."""
    c = _ctx(ctx)
    if target == "apps":
        stopped = apps.stop_apps(c.layout())
        if as_json:
            _print_json({"stopped": stopped})
        else:
            out.print(f"stopped {', '.join(stopped)}" if stopped else "no application running")
        return
    result = lifecycle.stop(c.settings(), c.layout())
    if as_json:
        _print_json({"was_running": result.was_running, "stopped_pids": result.stopped_pids})
    else:
        out.print("stopped" if result.was_running else "not running; nothing to stop")


@app.command()
@mutating
def restart(
    ctx: typer.Context,
    nodes: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[NODE]...",
            help="Restart only PostgreSQL on these nodes, through Patroni (the platform keeps "
            "running).",
        ),
    ] = None,
    rolling: Annotated[
        bool,
        typer.Option(
            "--rolling", help="Every node, one at a time: replicas first, the master last."
        ),
    ] = False,
    pending: Annotated[
        bool,
        typer.Option("--pending", help="Only the nodes 'list' shows with a pending restart."),
    ] = False,
    switchover_first: Annotated[
        bool,
        typer.Option(
            "--switchover",
            help="Before the master's own restart, switch its role to a replica (no write "
            "outage beyond the switchover's).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait (for each node).")
    ] = 180.0,
    as_json: JsonOpt = False,
) -> None:
    """Without NODE: stop, then start again (applies a changed config). With NODE, --rolling or
    --pending: restart PostgreSQL through Patroni, one node at a time, replicas first, each
    running again before the next (a 'pending restart' setting takes effect)."""
    c = _ctx(ctx)
    if not nodes and not rolling and not pending:
        if switchover_first or as_json:
            raise ConfigError("--switchover and --json go with NODE, --rolling or --pending")
        stop(ctx, target="all", as_json=False)
        start(
            ctx,
            target="video",
            timeout=timeout,
            as_json=False,
            failover=None,
            replication=None,
            profile=None,
        )
        return
    c.require_running()
    settings = c.settings()
    names = list(nodes or []) or [n.name for n in settings.nodes]
    for name in names:
        settings.node(name)  # an unknown name: a clear error before anything restarts
    done = members.restart_nodes(
        settings,
        load_secrets(c.layout()),
        names,
        pending_only=pending,
        switchover_first=switchover_first,
        timeout=timeout,
        progress=_progress(as_json),
    )
    if as_json:
        _print_json({"restarted": done})
    else:
        out.print(f"restarted: {', '.join(done) or 'none'}", highlight=False)


@app.command(epilog=examples("platform.sh reload postgres-video-slave", "platform.sh reload --all"))
@mutating
def reload(
    ctx: typer.Context,
    nodes: Annotated[list[str] | None, typer.Argument(metavar="[NODE]...")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every node.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make Patroni re-read its configuration and reload PostgreSQL's on these nodes."""
    c = _ctx(ctx)
    c.require_running()
    settings = c.settings()
    if not nodes and not every:
        raise ConfigError("name the nodes to reload, or --all")
    names = [n.name for n in settings.nodes] if every else list(nodes or [])
    for name in names:
        settings.node(name)
    done = members.reload_nodes(settings, load_secrets(c.layout()).api_password, names)
    if as_json:
        _print_json({"reloaded": done})
    else:
        out.print(f"reloaded: {', '.join(done)}", highlight=False)


@app.command("list", epilog=examples("platform.sh list", "platform.sh list --json"))
def list_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The members in one table, as Patroni's /cluster has them: role, state, timeline, lag
    (bytes behind the leader's last position in etcd), pending restart."""
    c = _ctx(ctx)
    c.require_running()
    found = members.list_members(c.settings())
    if as_json:
        _print_json([asdict(m) for m in found])
        return
    out.print(render_text.members_table(found))


@app.command(epilog=examples("platform.sh history", "platform.sh history --json"))
def history(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Failovers and switchovers: the timeline each ended, at which LSN, when, why, and the
    node that took over (Patroni's /history)."""
    c = _ctx(ctx)
    c.require_running()
    entries = members.history(c.settings())
    if as_json:
        _print_json([asdict(e) for e in entries])
        return
    if not entries:
        out.print("no failover or switchover yet (timeline 1)")
        return
    out.print(render_text.history_table(entries))


@app.command("show-config", epilog=examples("platform.sh show-config"))
def show_config(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Patroni's dynamic configuration (in etcd, shared by every node), as YAML."""
    c = _ctx(ctx)
    c.require_running()
    config = members.show_config(c.settings())
    if as_json:
        _print_json(config)
    else:
        out.print(yaml.safe_dump(config, sort_keys=True).rstrip(), highlight=False)


@app.command(
    "edit-config",
    epilog=examples(
        "platform.sh edit-config loop_wait=2 maximum_lag_on_failover=2097152",
        "platform.sh edit-config postgresql.parameters.work_mem=8MB",
        "platform.sh edit-config postgresql.parameters.max_connections=150   # pending restart",
        "platform.sh restart --pending --switchover",
    ),
)
@mutating
def edit_config(
    ctx: typer.Context,
    assignments: Annotated[
        list[str],
        typer.Argument(
            metavar="KEY=VALUE...",
            help="Patroni dynamic settings (ttl, loop_wait, synchronous_mode...) or "
            "postgresql.parameters.NAME (empty value: back to the default).",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Change Patroni's dynamic configuration, checked first (unknown keys, parameters that
    PostgreSQL would refuse, and parameters the config file or the platform sets in each node's
    own configuration, which overrides this one, change nothing), applied by every node without
    a restart where PostgreSQL allows; a setting that needs one shows as 'pending restart' in
    'list' until 'restart --pending'. The timings and modes the config file holds ([patroni])
    are applied again by the next 'start' on a running platform."""
    c = _ctx(ctx)
    c.require_running()
    change = members.edit_config(
        c.settings(), c.layout(), load_secrets(c.layout()), assignments, progress=_progress(as_json)
    )
    if as_json:
        _print_json(asdict(change))
        return
    out.print(f"applied: {', '.join(assignments)}", highlight=False)
    if change.pending_restart:
        out.print(
            f"pending restart on {', '.join(change.pending_restart)}: 'platform.sh restart "
            "--pending' (add --switchover to keep writes going)",
            highlight=False,
        )


@app.command(
    "install-service",
    epilog=examples(
        "platform.sh install-service && systemctl daemon-reload && systemctl enable videodb-local",
        "platform.sh --cluster c.toml --host db1 install-service",
        "platform.sh install-service --unit-dir /tmp/units   # write it elsewhere to look at it",
    ),
)
def install_service(
    ctx: typer.Context,
    unit_dir: Annotated[
        Path,
        typer.Option(
            "--unit-dir", metavar="DIR", help="Where to write the unit (systemd's, by default)."
        ),
    ] = service_unit.SYSTEM_UNITS,
    as_json: JsonOpt = False,
) -> None:
    """Write a systemd unit that starts this host's part at boot ('start video' with the
    options given here) and stops it at shutdown. Enable it with systemctl."""
    c = _ctx(ctx)
    args: list[str] = []
    if c.cluster_file is not None:
        args += ["--cluster", str(c.cluster_file.resolve())]
    elif c.config_file is not None:
        args += ["--config", str(c.config_file.resolve())]
    for assignment in c.assignments:
        args += ["--set", assignment]
    script = project_home() / "scripts" / "platform.sh"
    try:
        unit = service_unit.write_unit(c.settings(), c.layout(), script, args, unit_dir)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the unit into {unit_dir} ({exc.strerror}): run as root, or give "
            "--unit-dir DIR"
        ) from exc
    if as_json:
        _print_json({"unit": unit.name, "path": str(unit.path)})
        return
    out.print(f"wrote {unit.path}", highlight=False)
    out.print(
        f"enable it: systemctl daemon-reload && systemctl enable --now {unit.name}", highlight=False
    )


@app.command()
@mutating
def destroy(
    ctx: typer.Context,
    force: ForceOpt = False,
) -> None:
    """Stop everything and delete the state directory: data, logs, secrets and backups."""
    c = _ctx(ctx)
    layout = c.layout()
    if not force:
        confirm(f"Delete {layout.root} with all its data, logs, secrets and backups?")
    lifecycle.destroy(c.settings(), layout)
    out.print(f"removed {layout.root}")


@app.command(
    "status",
    epilog=examples(
        "platform.sh status",
        "platform.sh status --json | jq '.services[] | {name, role, healthy}'",
        "platform.sh --state-dir /srv/videodb status",
    ),
)
def status_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every process with its role, pid, port and health, and this host's certificates with their
    expiry (a warning tls.warn_days before). Exit 1 if unhealthy or a certificate expired, 3 if
    stopped or never started in this state directory (then one line says so)."""
    c = _ctx(ctx)
    layout = c.layout()
    if status.never_started(layout):
        if as_json:
            _print_json({"running": False, "started": False, "state_dir": str(layout.root)})
        else:
            out.print(
                f"nothing was ever started in state directory {layout.root}; start the platform "
                "there with 'platform.sh start video' (or pass the --state-dir you started)",
                highlight=False,
            )
        raise typer.Exit(3)
    report = status.platform_status(c.settings(), layout)
    if as_json:
        _print_json(report.as_dict())
    else:
        out.print(render_text.status_table(report))
        if report.certificates:
            out.print(render_text.certificate_table(report))
        for cert in report.certificates:
            days = float(cert["days_left"])
            if days <= 0:
                err.print(
                    f"[red]expired:[/] {cert['file']} ({cert['subject']}); make new ones with "
                    "'platform.sh rotate certs' (the CA: 'rotate ca')",
                    highlight=False,
                )
            elif cert["warning"]:
                err.print(
                    f"[yellow]warning:[/] {cert['file']} ({cert['subject']}) expires in "
                    f"{days:.0f} days; 'platform.sh rotate certs' (the CA: 'rotate ca')",
                    highlight=False,
                )
    if not report.running:
        raise typer.Exit(3)
    if not report.healthy:
        raise typer.Exit(1)


@app.command(
    "replication-status",
    epilog=examples(
        "platform.sh replication-status",
        "platform.sh replication-status --max-lag 1 --json",
    ),
)
def replication_status(
    ctx: typer.Context,
    max_lag: Annotated[
        float, typer.Option("--max-lag", help="Seconds of lag above which to exit 1.")
    ] = replication.DEFAULT_MAX_LAG_S,
    as_json: JsonOpt = False,
) -> None:
    """Per replica: state, sent/write/flush/replay LSN, lag (bytes, s), slot, sync state.

    Exit 1 when a replica is not streaming or lags more than --max-lag seconds.
    """
    c = _ctx(ctx)
    c.require_running()
    layout = c.layout()
    report = replication.replication_report(c.settings(), load_secrets(layout), max_lag_s=max_lag)
    if as_json:
        _print_json(report.as_dict())
    else:
        out.print(render_text.replication_table(report))
        for replica in report.replicas:
            if replica.problem:
                err.print(f"[red]problem:[/] {replica.problem}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command(
    "haproxy-stats",
    epilog=examples(
        "platform.sh haproxy-stats",
        "platform.sh haproxy-stats --url",
    ),
)
def haproxy_stats(
    ctx: typer.Context,
    url: Annotated[bool, typer.Option("--url", help="Only print the stats page address.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Each HAProxy backend server: UP/DOWN, sessions, response time (every HAProxy of a
    cluster across hosts, each with its host)."""
    c = _ctx(ctx)
    settings = c.settings()
    proxies = [h for h in settings.topology_hosts() if h.haproxy]
    if url:
        for host in proxies:
            out.print(stats_url(settings, host.address), highlight=False)
        return
    c.require_running()
    found: list[tuple[str, str, list[Any] | None, str]] = []
    for host in proxies:
        address = stats_url(settings, host.address)
        try:
            found.append(
                (host.name, address, fetch_server_status(settings, address=host.address), "")
            )
        except NotRunningError as exc:
            if not settings.multi_host:
                raise
            found.append((host.name, address, None, str(exc)))
    if as_json:
        servers = [
            {**s.as_dict(), "host": name} for name, _, listed, _ in found for s in listed or []
        ]
        hosts = [
            {"host": name, "url": address, "reachable": listed is not None, "error": error or None}
            for name, address, listed, error in found
        ]
        _print_json({"url": found[0][1] if found else None, "servers": servers, "hosts": hosts})
        return
    for name, address, listed, error in found:
        if settings.multi_host:
            out.print(f"host {name}:", highlight=False)
        if listed is None:
            err.print(f"[red]not reachable:[/] {error}", highlight=False)
            continue
        out.print(render_text.haproxy_table(listed))
        out.print(f"stats page: {address}   metrics: {address[:-6]}/metrics", highlight=False)
    if any(listed is None for _, _, listed, _ in found):
        raise typer.Exit(1)


@app.command(
    epilog=examples(
        "platform.sh logs postgres-video-master -n 50",
        "platform.sh logs haproxy-postgres -f",
    )
)
def logs(
    ctx: typer.Context,
    service: Annotated[
        str,
        typer.Argument(
            metavar="SERVICE",
            help="postgres-video-master, postgres-video-slave, haproxy-postgres, etcd, upload, "
            "metadata, streaming, supervisord, cli (what state-changing commands did)",
        ),
    ],
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[
        int, typer.Option("-n", "--lines", metavar="N", help="Lines to show.", min=0)
    ] = 100,
) -> None:
    """A service's logs (Patroni's and PostgreSQL's for a database node)."""
    c = _ctx(ctx)
    files = tools.log_files(c.settings(), c.layout(), service)
    argv = tools.tail_command(files, lines, follow)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@app.command(
    "shell-video",
    epilog=examples(
        "platform.sh shell-video",
        "platform.sh shell-video -c 'SELECT * FROM pg_stat_replication'",
    ),
)
def shell_video(
    ctx: typer.Context,
    command: Annotated[
        str | None, typer.Option("-c", "--command", metavar="SQL", help="Run one SQL command.")
    ] = None,
) -> None:
    """psql as the superuser on the current master, database video_platform."""
    c = _ctx(ctx)
    c.require_running()
    argv, env = tools.psql_command(c.settings(), c.layout(), command)
    sys.stdout.flush()
    if command is not None:
        raise typer.Exit(subprocess.run(argv, env=env, check=False).returncode)
    os.execve(argv[0], argv, env)


@app.command(
    "promote-slave",
    epilog=examples(
        "platform.sh promote-slave",
        "platform.sh promote-slave --to postgres-video-slave --force --json",
    ),
)
@mutating
def promote_slave(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="NODE", help="Node to promote (default: the slave)."),
    ] = None,
    force: ForceOpt = False,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait for the new master.")
    ] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """EMERGENCY: promote the slave to master. The old master rejoins as a replica."""
    c = _ctx(ctx)
    c.require_running()
    settings = c.settings()
    secrets = load_secrets(c.layout())
    candidate = promote.choose_candidate(settings, to)
    if not force:
        confirm(f"Promote {candidate} to master? Writes pause until it is promoted.")
    result = promote.promote(settings, secrets, candidate, timeout=timeout)
    if as_json:
        _print_json(
            {
                "old_primary": result.old_primary,
                "new_primary": result.new_primary,
                "elapsed_s": round(result.elapsed_s, 3),
            }
        )
    else:
        out.print(
            f"{result.new_primary} is the master (was {result.old_primary}); write port "
            f"{settings.haproxy.write_port} follows it ({result.elapsed_s:.1f} s)"
        )


@app.command(
    epilog=examples(
        "platform.sh switchover",
        "platform.sh switchover --to postgres-video-master",
    )
)
@mutating
def switchover(
    ctx: typer.Context,
    to: Annotated[
        str | None, typer.Option("--to", metavar="NODE", help="Node to switch to.")
    ] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait.")] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Planned switch of roles: waits until the candidate has replayed everything first."""
    c = _ctx(ctx)
    c.require_running()
    settings = c.settings()
    result = ha.switchover(settings, load_secrets(c.layout()), to, timeout=timeout)
    if as_json:
        _print_json(asdict(result))
    else:
        out.print(
            f"{result.new_primary} is the master (was {result.old_primary}); caught up in "
            f"{result.sync_wait_s:.2f} s, switched in {result.elapsed_s:.2f} s"
        )


@app.command(
    epilog=examples(
        "platform.sh maintenance on",
        "platform.sh maintenance off",
    )
)
@mutating
def maintenance(
    ctx: typer.Context,
    state: Annotated[OnOff, typer.Argument(help="on: pause automatic failover; off: resume it.")],
) -> None:
    """Pause or resume Patroni's automatic failover (maintenance mode)."""
    c = _ctx(ctx)
    c.require_running()
    ha.set_maintenance(c.settings(), load_secrets(c.layout()), state == "on")
    out.print(
        "maintenance on: nothing is promoted automatically; 'promote-slave' still works"
        if state == "on"
        else "maintenance off: Patroni fails over automatically again"
    )


@app.command("wait-sync")
def wait_sync(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait.")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Wait until every replica has replayed the master's current LSN; exit 1 if not in time."""
    c = _ctx(ctx)
    c.require_running()
    report = ha.wait_sync(c.settings(), load_secrets(c.layout()), timeout=timeout)
    if as_json:
        _print_json(report.as_dict())
    elif report.synced:
        out.print(f"all replicas replayed {report.target_lsn} ({report.elapsed_s:.3f} s)")
    else:
        err.print(f"not in sync after {timeout:g} s; bytes behind {report.target_lsn}:")
        for name, lag in report.lag_bytes.items():
            err.print(f"  {name}: {'not connected' if lag is None else lag}")
    if not report.synced:
        raise typer.Exit(1)


@app.command()
@mutating
def rejoin(
    ctx: typer.Context,
    node: Annotated[
        str, typer.Argument(metavar="NODE", help="The replica to re-clone from the master.")
    ],
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait.")] = 120.0,
) -> None:
    """Force a replica to re-clone from the master and stream again."""
    c = _ctx(ctx)
    c.require_running()
    elapsed = ha.rejoin(c.settings(), load_secrets(c.layout()), node, timeout=timeout)
    out.print(f"{node} streams from the master again ({elapsed:.1f} s)")


@app.command(
    "add-replica",
    epilog=examples(
        "platform.sh add-replica",
        "platform.sh add-replica postgres-video-replica-3 --port 5437",
    ),
)
@mutating
def add_replica(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="Node name (default postgres-video-replica-N)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(metavar="PORT", help="PostgreSQL port (default: next free).")
    ] = None,
    api_port: Annotated[
        int | None, typer.Option(metavar="PORT", help="Patroni REST port (default: next free).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait for it to stream.")
    ] = 180.0,
    as_json: JsonOpt = False,
) -> None:
    """Add a read replica: it clones from the master, streams, then joins the read port."""
    c = _ctx(ctx)
    c.require_running()
    progress = _progress(as_json)

    _, change = topology.add_replica(
        c.settings(), c.layout(), name, port, api_port, timeout=timeout, progress=progress
    )
    if as_json:
        _print_json(asdict(change))
    else:
        out.print(
            f"{change.name} streams and serves reads (postgres {change.port}, api "
            f"{change.api_port}) after {change.elapsed_s:.1f} s"
        )


@app.command(
    "add-host",
    epilog=examples(
        "platform.sh --cluster cluster.toml --host db1 add-host db4",
        "   (cluster.toml already lists db4; see docs/operator-guide.md, 'Adding a host')",
    ),
)
@mutating
def add_host(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="HOST", help="A host the cluster file lists.")],
    as_json: JsonOpt = False,
) -> None:
    """Register a new host of the cluster file with the running cluster (its etcd member, as a
    learner), then print what to run on each host. Run on any running host."""
    c = _ctx(ctx)
    c.require_running()
    result = hosts.add_host(c.settings(), name, c.cluster_file)
    member = (
        f"etcd member {result.etcd_member} added as a learner"
        if result.etcd_member
        else "no etcd member on it"
    )
    _print_host_change(result, f"{name}: {member}", result.next_steps, as_json)


def _print_host_change(result: Any, done: str, steps: list[str], as_json: bool) -> None:
    """add-host / remove-host: what was done, then what to run on each host."""
    if as_json:
        _print_json(asdict(result))
        return
    out.print(f"{done}; next:", highlight=False)
    for step in steps:
        out.print(f"  {step}", highlight=False)


@app.command(
    "remove-host",
    epilog=examples(
        "platform.sh --cluster cluster.toml --host db4 stop        # on db4, first",
        "platform.sh --cluster cluster.toml --host db1 remove-host db4",
    ),
)
@mutating
def remove_host(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="HOST", help="A stopped host of the cluster file.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Take a stopped host out of the running cluster (its etcd member), then print what to run
    on each host. Run on another, running host."""
    c = _ctx(ctx)
    c.require_running()
    result = hosts.remove_host(c.settings(), name, c.cluster_file)
    member = (
        f"etcd member {result.etcd_member_removed} removed"
        if result.etcd_member_removed
        else "no etcd member to remove"
    )
    _print_host_change(result, f"{name}: {member}", result.next_steps, as_json)


@app.command("remove-replica")
@mutating
def remove_replica(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="A replica added with add-replica.")],
    drain_timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to let its HAProxy sessions finish.")
    ] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Remove a replica: out of HAProxy first (drained), then stopped, its data deleted."""
    c = _ctx(ctx)
    c.require_running()
    progress = _progress(as_json)

    _, change = topology.remove_replica(
        c.settings(), c.layout(), name, drain_timeout=drain_timeout, progress=progress
    )
    if as_json:
        _print_json(asdict(change))
    else:
        out.print(f"{change.name} removed ({change.elapsed_s:.1f} s)")


@app.command(
    "failover-test",
    epilog=examples(
        "platform.sh failover-test",
        "platform.sh failover-test --fault kill-node --repeat 3 --json",
        "platform.sh --cluster cluster.toml --host app1 failover-test --fault isolate-host",
    ),
)
@mutating
def failover_test(
    ctx: typer.Context,
    fault: Annotated[
        FaultChoice,
        typer.Option(
            help="kill-postgres: kill -9 of the master's postgres; kill-node: of Patroni and "
            "postgres; freeze: SIGSTOP of both; switchover: a planned switch. Across hosts (a "
            "cluster file with drill.* commands): isolate-host cuts the master's host off the "
            "network, lose-host switches it off; each is then brought back."
        ),
    ] = "kill-postgres",
    freeze_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="How long 'freeze' stops the master (default ttl + 5)."
        ),
    ] = None,
    repeat: Annotated[
        int, typer.Option(metavar="N", min=1, max=50, help="Runs of the same fault (1-50).")
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Drill: inject a fault on the master under load; report downtime, lost and in-doubt writes.

    Also counted: writes the write port sent to a server still in recovery (read-only, SQLSTATE
    25006), and in a synchronous mode how long commits were acknowledged with no synchronous
    standby (unprotected seconds). Exit 1 if a run lost an acknowledged write, saw two masters at
    once, or did not heal.
    """
    c = _ctx(ctx)
    c.require_running()
    progress = _progress(as_json)

    report = drill.run_drills(
        c.settings(),
        c.layout(),
        load_secrets(c.layout()),
        fault,
        repeat=repeat,
        freeze_seconds=freeze_seconds,
        progress=progress,
    )
    if as_json:
        _print_json(report.as_dict())
    else:
        out.print(render_text.drill_table(report))
    if not report.passed:
        raise typer.Exit(1)


@app.command(
    "backup-video",
    epilog=examples(
        "platform.sh backup-video",
        "platform.sh backup-video --physical",
        "platform.sh backup list",
    ),
)
@mutating
def backup_video(
    ctx: typer.Context,
    physical: Annotated[
        bool,
        typer.Option(
            "--physical",
            help="A base backup (pg_basebackup) for point-in-time recovery, instead of the "
            "guide's logical dump.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up from the master into the repository: a pg_dump of video_platform (the guide's),
    or with --physical a base backup; then the videos' bytes and posters the repository lacks
    (checked against their SHA-256) into its videos/. Progress on stderr; 'backup list' shows
    them."""
    c = _ctx(ctx)
    c.require_running()
    layout = c.layout()
    progress = _progress(as_json)
    secrets = load_secrets(layout)
    if physical:
        info = backups_physical.take_base_backup(c.settings(), layout, secrets, progress=progress)
    else:
        info = backups_logical.dump_database(c.settings(), layout, secrets, progress=progress)
    repo = repo_for(c.settings(), layout)
    copied = backups_videos.copy_videos(
        c.settings(), layout, repo, info, secrets, progress=progress
    )
    path = repo.data_path(info)
    if copied.not_in_store:
        lacking = copied.not_in_store
        err.print(
            f"[yellow]warning:[/] {len(lacking)} video(s) the database names are not in the video "
            f"store, so not in this backup either: {', '.join(lacking[:3])}"
            + (" ..." if len(lacking) > 3 else ""),
            highlight=False,
        )
    if as_json:
        _print_json({**info.as_dict(), "path": str(path), "videos": asdict(copied)})
    else:
        out.print(
            f"{info.id}  {info.kind}  {size(info.size_bytes)} from {info.source}  {path}",
            highlight=False,
        )
        out.print(
            f"videos: {copied.named} named, {copied.copied} copied ({size(copied.bytes_copied)})"
            f" into {repo.videos}",
            highlight=False,
        )


rotate_app = typer.Typer(
    help="Replace credentials on the running platform with no restart and no failed request: "
    "this host's certificates, the cluster CA, or a password.",
    no_args_is_help=True,
)
app.add_typer(rotate_app, name="rotate")


def _print_rotation(result: rotate.RotationResult, as_json: bool) -> None:
    if as_json:
        _print_json(result.to_json())
        return
    out.print(f"rotated {result.what} in {result.elapsed_s:.1f} s:", highlight=False)
    for step in result.steps:
        out.print(f"  {step}", highlight=False)
    for step in result.next_steps:
        out.print(f"next: {step}", highlight=False)


@rotate_app.command("certs", epilog=examples("platform.sh rotate certs"))
@mutating
def rotate_certs(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """New keys and certificates for this host from the same CA. PostgreSQL, Patroni and etcd
    take them without a restart; waits until each serves the new certificate."""
    c = _ctx(ctx)
    _print_rotation(rotate.rotate_certs(c.settings(), c.layout(), _progress(as_json)), as_json)


@rotate_app.command(
    "ca",
    epilog=examples(
        "platform.sh rotate ca                        # one host: every phase",
        "platform.sh --cluster c.toml --host db1 rotate ca --phase trust   # then copy",
        "   c.toml.secrets to the other hosts; --phase trust on each; --phase reissue on",
        "   each; --phase finish on each",
    ),
)
@mutating
def rotate_ca(
    ctx: typer.Context,
    phase: Annotated[
        rotate.CAPhase | None,
        typer.Option(
            "--phase",
            help="trust, reissue or finish (across hosts: each on every host, in this order).",
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option("--ca-cert", help="Your own new CA's certificate (PEM) instead of a new CA."),
    ] = None,
    ca_key: Annotated[
        Path | None, typer.Option("--ca-key", help="Its private key (PEM), with --ca-cert.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace the cluster CA: trust the new one beside the old, re-sign every certificate with
    it, then drop the old one. etcd members restart one at a time (they read CAs only at start);
    PostgreSQL and Patroni reload."""
    c = _ctx(ctx)
    settings = c.settings()
    own = ca_material(settings.patroni.scope, ca_cert, ca_key) if ca_cert or ca_key else None
    result = rotate.rotate_ca(settings, c.layout(), _progress(as_json), phase, own)
    _print_rotation(result, as_json)


@rotate_app.command(
    "password",
    epilog=examples(
        "platform.sh rotate password app",
        "platform.sh rotate password superuser --json",
    ),
)
@mutating
def rotate_password(
    ctx: typer.Context,
    which: Annotated[
        rotate.PasswordKind,
        typer.Argument(
            metavar="app|superuser|patroni-api",
            help="The application role's, the PostgreSQL superuser's, or Patroni's REST API's.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """A new password, stored first, then applied to the server and every consumer on this host
    (the applications read theirs at each new connection: no restart, no failed request). At
    the end the old password is refused, and this is checked."""
    c = _ctx(ctx)
    c.require_running()
    loaded = c.loaded()
    loaded.settings = c.settings()
    result = rotate.rotate_password(loaded, c.layout(), which, _progress(as_json))
    _print_rotation(result, as_json)


backup_app = typer.Typer(help="The backup repository: list, verify, prune.", no_args_is_help=True)
app.add_typer(backup_app, name="backup")

cluster_app = typer.Typer(
    help="A platform across several hosts, described by a cluster file.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command(
    "init",
    epilog=examples(
        "platform.sh cluster init cluster.toml    then copy cluster.toml and",
        "                                          cluster.toml.secrets to every host",
    ),
)
def cluster_init(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The cluster file (TOML).")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing bundle (locks out a running cluster)."),
    ] = False,
    ca_cert: Annotated[
        Path | None,
        typer.Option("--ca-cert", help="Your own CA's certificate (PEM) instead of a new CA."),
    ] = None,
    ca_key: Annotated[
        Path | None,
        typer.Option("--ca-key", help="Its private key (PEM, unencrypted), with --ca-cert."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a cluster file and make the cluster's shared secrets once, in FILE.secrets (0600):
    the superuser and Patroni REST API passwords, the application role's, the SeaweedFS gateway's
    secret, and the cluster CA (new, or yours with --ca-cert/--ca-key) that signs every host's
    certificates. On a bundle an older version made, it adds what is missing and keeps the rest.

    Copy both files to every host, then run on each: platform.sh --cluster FILE --host NAME start
    video. The hosts may start in any order.
    """
    bundle = bundle_path(file)
    loaded = load_settings(file, require_file=True, assignments=[f"secrets_bundle={bundle}"])
    hosts = loaded.settings.topology_hosts()
    ca = ca_material(loaded.settings.patroni.scope, ca_cert, ca_key)
    if (
        bundle.exists()
        and not force
        and (read_bundle(bundle).ca is None or not read_bundle(bundle).storage_secret)
    ):
        # A bundle made before TLS or before SeaweedFS: what it has is kept, the rest added.
        older = read_bundle(bundle)
        if older.ca is None:
            older = older.with_ca(ca)
        if not older.storage_secret:
            older = older.with_storage_secret()
        write_bundle(bundle, older)
    else:
        create_bundle(bundle, ca, force=force)
    commands = [
        f"./scripts/platform.sh --cluster {file} --host {h.name} start video" for h in hosts
    ]
    if as_json:
        _print_json(
            {"secrets": str(bundle), "hosts": [h.name for h in hosts], "commands": commands}
        )
        return
    out.print(f"wrote {bundle} (0600): copy it beside {file} on every host", highlight=False)
    out.print("then run, on each host (any order):", highlight=False)
    for command in commands:
        out.print(f"  {command}", highlight=False)


@backup_app.command("list")
def backup_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every backup: id, kind, start and end (time and LSN), size, verified or not; the last
    scheduled runs with their outcome ('backup schedule'); and whether each node's WAL archiving
    works (pg_stat_archiver)."""
    c = _ctx(ctx)
    repo = repo_for(c.settings(), c.layout())
    infos = repo.all()
    wal = repo.wal_bytes() if repo.wal.is_dir() else 0
    archivers = []
    if lifecycle.is_running(c.layout()):
        archivers = archiver_status(c.settings(), load_secrets(c.layout()))
    schedule = read_schedule(repo)
    runs = read_runs(repo, 10)
    if as_json:
        _print_json(
            {
                "repo": str(repo.root),
                "wal_bytes": wal,
                "backups": [i.as_dict() for i in infos],
                "archivers": [{**asdict(a), "detail": a.detail} for a in archivers],
                "schedule": asdict(schedule) if schedule else None,
                "scheduled_runs": [asdict(r) for r in runs],
            }
        )
        return
    out.print(render_text.backups_table(infos, str(repo.root), wal))
    if runs:
        out.print(render_text.scheduled_runs_table(runs))
    for a in archivers:
        colour = "red" if a.failing or not a.reachable else "green"
        out.print(f"archiving on {a.node}: [{colour}]{escape(a.detail)}[/]", highlight=False)


@backup_app.command("verify")
@mutating
def backup_verify(
    ctx: typer.Context,
    backup_id: Annotated[
        str, typer.Argument(metavar="BACKUP_ID", help="A backup id from 'backup list'.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Checksums (pg_verifybackup, or the dump's SHA-256), the videos' copies the backup names
    (each read again against its SHA-256), then a real restore into a throwaway instance that
    must start and answer queries. Exit 1 when the backup is damaged."""
    c = _ctx(ctx)
    try:
        info = backups_verify.verify_backup(
            c.settings(), c.layout(), backup_id, progress=_progress(as_json)
        )
    except backups_verify.CorruptBackupError as exc:
        if as_json:
            _print_json({"id": backup_id, "verified": False, "detail": str(exc)})
        err.print(f"[bold red]damaged:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        _print_json(info.as_dict())
    else:
        out.print(f"{info.id} verified: {info.verify_detail}", highlight=False)


@backup_app.command("prune")
@mutating
def backup_prune(
    ctx: typer.Context,
    keep: Annotated[
        int, typer.Option("--keep", metavar="N", help="Backups of each kind to keep (newest).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Delete all but the newest --keep backups of each kind, and the archived WAL that only
    older base backups needed."""
    c = _ctx(ctx)
    result = backups_prune.prune(c.settings(), repo_for(c.settings(), c.layout()), keep)
    if as_json:
        _print_json(asdict(result))
    else:
        out.print(
            f"deleted {len(result.deleted)} backup(s), kept {len(result.kept)}; archived WAL "
            f"{size(result.wal_before)} -> {size(result.wal_after)}"
            + (f" (from {result.oldest_wal_kept} on)" if result.oldest_wal_kept else ""),
            highlight=False,
        )


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"--time {value!r} is not an ISO 8601 time; e.g. 2026-11-26T10:15:00+00:00"
        ) from exc
    return parsed if parsed.tzinfo else parsed.astimezone()


@app.command(
    epilog=examples(
        "platform.sh restore latest --time 2026-11-28T10:15:00+00:00",
        "platform.sh restore 20261128T101500123Z-base --latest --force",
        "platform.sh restore 20261128T101500123Z-dump --database video_platform",
    )
)
@mutating
def restore(
    ctx: typer.Context,
    backup_id: Annotated[
        str,
        typer.Argument(
            metavar="BACKUP_ID",
            help="A backup id from 'backup list', or 'latest': the newest base backup (that "
            "started before --time, when given).",
        ),
    ],
    at_time: Annotated[
        str | None,
        typer.Option(
            "--time",
            metavar="TIME",
            help="Physical: recover to this time (ISO 8601; local if no zone).",
        ),
    ] = None,
    lsn: Annotated[
        str | None, typer.Option("--lsn", metavar="LSN", help="Physical: recover to this LSN.")
    ] = None,
    latest: Annotated[
        bool,
        typer.Option(
            "--latest", help="Physical: recover to the end of the WAL archive (the default)."
        ),
    ] = False,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            metavar="DB",
            help="Logical: the database to restore into (default: the one dumped).",
        ),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup. A dump goes into a database (through a temporary one, then swapped);
    a base backup is recovered to --time, --lsn or --latest beside the running cluster, then
    becomes the master that the other nodes clone from. What is replaced is set aside, not
    deleted; a damaged backup or an unreachable target changes nothing. Then the videos' bytes
    the store lacks are put back from the repository; exit 1 naming the videos whose bytes are
    in neither place."""
    c = _ctx(ctx)
    settings = c.settings()
    layout = c.layout()
    repo = repo_for(settings, layout)
    if sum(1 for given in (at_time is not None, lsn is not None, latest) if given) > 1:
        raise ConfigError("give at most one of --time, --lsn and --latest")
    when = _parse_time(at_time) if at_time else None
    if backup_id == "latest":
        physical = [i for i in repo.all() if i.kind == "physical"]
        if when is not None:
            physical = [i for i in physical if datetime.fromisoformat(i.started_at) <= when]
        if not physical:
            raise ConfigError(
                "no base backup to restore from"
                + (f" that started before {at_time}" if when else "")
                + "; take one with 'platform.sh backup-video --physical'"
            )
        info = physical[-1]
        log.info("restore latest%s: chose %s", f" before {at_time}" if when else "", info.id)
    else:
        info = repo.get(backup_id)
    if info.kind == "logical" and (when is not None or lsn or latest):
        raise ConfigError(
            f"{info.id} is a logical dump: --time, --lsn and --latest need a base backup"
        )
    if info.kind == "physical" and database:
        raise ConfigError(
            f"{info.id} is a base backup: it restores the whole cluster, not --database"
        )
    progress = _progress(as_json)
    if info.kind == "logical":
        target_db = database or info.database or settings.database.name
        if not force:
            confirm(
                f"Restore dump {info.id} into database {target_db}? An existing {target_db} is "
                "renamed aside (its connections are closed)."
            )
        result = backups_restore.restore_logical(
            settings, layout, info, database, progress=progress
        )
    else:
        target = backups_restore.RecoveryTarget(time=when, lsn=lsn)
        if not force:
            confirm(
                f"Restore base backup {info.id} to {target.describe()} as the new master? The "
                "platform stops for the swap; every node's current data is moved aside."
            )
        result = backups_restore.restore_physical(settings, layout, info, target, progress=progress)
    videos = backups_videos.restore_videos(
        settings,
        layout,
        repo,
        load_secrets(layout),
        result.restored_to if info.kind == "logical" else None,
        progress=progress,
    )
    if as_json:
        _print_json({**asdict(result), "videos": asdict(videos)})
    else:
        out.print(
            f"restored {result.backup_id} ({result.kind}, to {result.target}) into "
            f"{result.restored_to} in {result.elapsed_s:.1f} s"
            + (f"; reached {result.reached}" if result.reached else "")
            + (f"; the replaced data is in {result.set_aside}" if result.set_aside else ""),
            highlight=False,
        )
        if videos.put_back:
            out.print(
                f"videos: put back the bytes of {videos.put_back} from {repo.videos}",
                highlight=False,
            )
    if videos.missing:
        names = "; ".join(f"{m['id']} ({m['title']!r})" for m in videos.missing[:10])
        err.print(
            f"[bold red]{len(videos.missing)} restored video(s) have their bytes neither in the "
            f"store nor in the backup repository[/] (they stream as 404): {escape(names)}"
            + (" ..." if len(videos.missing) > 10 else ""),
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
@mutating
def migrate(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Apply the applications' schema migrations (Alembic) through the write port."""
    from videodb.db import DataLayer, DataSourceSettings
    from videodb.services.schema import migrate as run_migrations

    c = _ctx(ctx)
    c.require_running()
    layer = DataLayer(DataSourceSettings.for_platform(c.settings()))
    try:
        result = run_migrations(layer)
    finally:
        layer.dispose()
    if as_json:
        _print_json({"before": result.before, "after": result.after, "changed": result.changed})
    elif result.changed:
        out.print(f"schema migrated from {result.before or 'empty'} to {result.after}")
    else:
        out.print(f"schema already at {result.after}; nothing to do")


@app.command(
    "config",
    epilog=examples(
        "platform.sh config",
        "platform.sh --port-offset 100 config --json",
    ),
)
def config_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the effective configuration as TOML, each value with where it came from (default,
    the config file, an environment variable or a flag); secrets redacted. --json for scripts."""
    c = _ctx(ctx)
    loaded = c.loaded()
    layout = c.layout()
    data = redacted(loaded.settings)
    data["state_dir"] = str(layout.root)
    doc = {
        "config_file": str(loaded.config_file) if loaded.config_file else None,
        "overrides": loaded.sources,
        "settings": data,
    }
    if as_json:
        _print_json(doc)
    else:
        sys.stdout.write(render_config(data, loaded.sources, loaded.config_file))


@app.command(
    epilog=examples(
        "platform.sh alerts",
        "platform.sh alerts --json | jq '.[] | select(.state == \"firing\")'",
    )
)
def alerts(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The alerts whose condition holds now: firing, or pending (holding, not yet for
    monitoring.alert_for_s), each with the node or host it is about and what to do. Alertmanager
    delivers the firing ones to monitoring.webhook_url."""
    c = _ctx(ctx)
    c.require_running()
    cli_monitoring.show_alerts(c.settings(), as_json)


@backup_app.command(
    "schedule",
    epilog=examples(
        "platform.sh backup schedule --base-every 1d --dump-every 6h --keep 7",
        "platform.sh backup schedule            # show it, and when each kind is due",
        "platform.sh backup schedule --off",
    ),
)
def backup_schedule(
    ctx: typer.Context,
    base_every: Annotated[
        str | None,
        typer.Option("--base-every", metavar="INTERVAL", help="A base backup this often: 1d, 6h."),
    ] = None,
    dump_every: Annotated[
        str | None,
        typer.Option("--dump-every", metavar="INTERVAL", help="A pg_dump this often: 6h, 30m."),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option("--keep", metavar="N", help="After each run, 'backup prune --keep N'."),
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop the schedule.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Backups the platform takes by itself: its backup scheduler (on the first application
    host) runs a kind one interval after its newest backup, records each run's outcome in the
    repository ('backup list') and exports it to Prometheus, which alerts when a run fails or
    a backup is overdue. With no option: the schedule and when each kind is due."""
    c = _ctx(ctx)
    cli_monitoring.backup_schedule(
        c.settings(), c.layout(), base_every, dump_every, keep, off, as_json
    )


def main() -> None:
    # Every tool, connection and server this command starts gets a clean libpq environment:
    # an operator's PGPASSWORD, PGSERVICE, PGSSLMODE... must not change what they connect to.
    pgenv.scrub()
    debug = "--debug" in sys.argv[1:]
    try:
        app(prog_name="platform.sh")
    except VideoDBError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:  # the last resort: one line, the traceback in a log
        if debug:
            raise
        log = crash.record(exc, sys.argv)
        err.print(
            f"[bold red]error:[/] {escape(crash.one_line(exc))}", highlight=False, soft_wrap=True
        )
        err.print(
            f"the traceback is in {log}; run again with --debug to print it here",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
