"""Every alert rule, evaluated by Prometheus's own `promtool test rules` over made-up series:
each fires when its condition holds (for monitoring.alert_for_s), with the labels that name what
it is about, and stays quiet otherwise. The rendered files pass promtool's and amtool's checks.

The summaries are left out of the comparison (promtool compares them verbatim); their templates
are checked by `promtool check rules`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from videodb.cluster.alert_rules import alert_rules
from videodb.cluster.monitoring import alertmanager_config, prometheus_config
from videodb.config import MonitoringSpec, Settings
from videodb.layout import StateLayout

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: Debian's prometheus package (platform.sh)"
)

MASTER, SLAVE = "postgres-video-master", "postgres-video-slave"
HOST = "local"


def settings() -> Settings:
    return Settings(monitoring=MonitoringSpec(alert_for_s=30, webhook_url="http://127.0.0.1:1/"))


def alert(name: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": labels}


def case(
    series: dict[str, str], checks: list[tuple[str, str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Input series (expression -> values) and (eval time, alert, expected alerts) checks."""
    return {
        "interval": "10s",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": at, "alertname": name, "exp_alerts": expected}
            for at, name, expected in checks
        ],
    }


def sev(severity: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": severity, **labels}}


CASES = [
    # The guide's "replication lag > 5 seconds": at once (the lag is a duration already).
    case(
        {f'videodb_replication_lag_seconds{{node="{SLAVE}",host="{HOST}"}}': "0 0 7 0"},
        [
            ("10s", "ReplicationLagHigh", []),
            ("20s", "ReplicationLagHigh", [sev("warning", node=SLAVE, host=HOST)]),
            ("30s", "ReplicationLagHigh", []),  # resolved
        ],
    ),
    # A replica not streaming while a node leads; the leader itself never counts.
    case(
        {
            f'patroni_primary{{node="{MASTER}"}}': "1x8",
            f'patroni_primary{{node="{SLAVE}"}}': "0x8",
            f'patroni_postgres_streaming{{node="{SLAVE}"}}': "1 0 0 0 0 0 1 1 1",
        },
        [
            ("20s", "ReplicaNotStreaming", []),  # pending for 30 s
            ("50s", "ReplicaNotStreaming", [sev("critical", node=SLAVE, host=HOST)]),
            ("70s", "ReplicaNotStreaming", []),  # streaming again
        ],
    ),
    # Its Patroni gone altogether (no series): not streaming either.
    case(
        {f'patroni_primary{{node="{MASTER}"}}': "1x8"},
        [("50s", "ReplicaNotStreaming", [sev("critical", node=SLAVE, host=HOST)])],
    ),
    case(
        {f'patroni_primary{{node="{MASTER}"}}': "1 1 0 0 0 0 0 0 1"},
        [
            ("40s", "NoLeader", []),
            ("60s", "NoLeader", [sev("critical")]),
            ("80s", "NoLeader", []),
        ],
    ),
    case(
        {
            # a switchover at 30 s: the slave leads on timeline 2, the master follows it
            f'patroni_postgres_timeline{{node="{MASTER}"}}': "1 1 1 1 2",
            f'patroni_postgres_timeline{{node="{SLAVE}"}}': "1 1 1 2 2",
            f'patroni_primary{{node="{MASTER}",host="{HOST}"}}': "1 1 1 0 0",
            f'patroni_primary{{node="{SLAVE}",host="{HOST}"}}': "0 0 0 1 1",
        },
        [
            ("20s", "FailoverHappened", []),
            (
                "40s",
                "FailoverHappened",
                [{"exp_labels": {"severity": "warning", "node": SLAVE, "host": HOST}}],
            ),
        ],
    ),
    # A start (no timeline while PostgreSQL comes up), and the newest node going down (the
    # highest timeline drops): no failover.
    case(
        {
            f'patroni_postgres_timeline{{node="{MASTER}"}}': "0 0 3 3 stale stale",
            f'patroni_postgres_timeline{{node="{SLAVE}"}}': "0 0 0 2 2 2",
            f'patroni_primary{{node="{MASTER}",host="{HOST}"}}': "0 0 1 1 stale stale",
            f'patroni_primary{{node="{SLAVE}",host="{HOST}"}}': "0 0 0 0 1 1",
        },
        [("30s", "FailoverHappened", []), ("50s", "FailoverHappened", [])],
    ),
    case(
        {f'up{{job="patroni",host="{HOST}",node="{SLAVE}",instance="127.0.0.1:8009"}}': "1 0x6"},
        [
            ("30s", "TargetDown", []),
            (
                "50s",
                "TargetDown",
                [
                    sev(
                        "critical",
                        job="patroni",
                        host=HOST,
                        node=SLAVE,
                        instance="127.0.0.1:8009",
                    )
                ],
            ),
        ],
    ),
    case(
        {f'pg_up{{node="{SLAVE}",host="{HOST}"}}': "0x6"},
        [("50s", "PostgresDown", [sev("critical", node=SLAVE, host=HOST)])],
    ),
    case(
        {
            f'haproxy_backend_active_servers{{proxy="postgres_write",host="{HOST}"}}': "0x6",
            f'haproxy_backend_active_servers{{proxy="stats",host="{HOST}"}}': "0x6",
        },
        [
            (
                "50s",
                "HAProxyBackendEmpty",
                [sev("critical", proxy="postgres_write", host=HOST)],
            )
        ],
    ),
    case(
        {
            f'haproxy_server_status{{proxy="postgres_read",server="{SLAVE}",state="DOWN",'
            f'host="{HOST}"}}': "1x6",
            # a replica is DOWN in the write backend by design
            f'haproxy_server_status{{proxy="postgres_write",server="{SLAVE}",state="DOWN",'
            f'host="{HOST}"}}': "1x6",
        },
        [
            (
                "50s",
                "HAProxyServerDown",
                [
                    sev(
                        "warning",
                        proxy="postgres_read",
                        server=SLAVE,
                        state="DOWN",
                        host=HOST,
                    )
                ],
            )
        ],
    ),
    case(
        {f'etcd_server_has_leader{{host="{HOST}"}}': "1 0x6"},
        [
            ("20s", "EtcdUnhealthy", []),
            ("50s", "EtcdUnhealthy", [sev("critical", host=HOST)]),
        ],
    ),
    case(
        {f'videodb_archiver_failing{{node="{MASTER}",host="{HOST}"}}': "0 1 0"},
        [
            ("0s", "WalArchivingFailing", []),
            ("10s", "WalArchivingFailing", [sev("critical", node=MASTER, host=HOST)]),
            ("20s", "WalArchivingFailing", []),
        ],
    ),
    case(
        {f'videodb_archiver_ready_segments{{node="{MASTER}",host="{HOST}"}}': "3 20x6"},
        [
            ("0s", "WalArchivingBehind", []),
            ("50s", "WalArchivingBehind", [sev("warning", node=MASTER, host=HOST)]),
        ],
    ),
    # Due at 0 s, every 20 s: missed once half an interval has passed.
    case(
        {
            f'videodb_backup_due_timestamp_seconds{{kind="base",host="{HOST}"}}': "0x10",
            f'videodb_backup_schedule_interval_seconds{{kind="base",host="{HOST}"}}': "20x10",
            f'videodb_backup_due_timestamp_seconds{{kind="dump",host="{HOST}"}}': "100x10",
            f'videodb_backup_schedule_interval_seconds{{kind="dump",host="{HOST}"}}': "20x10",
        },
        [
            ("0s", "BackupScheduleMissed", []),
            ("20s", "BackupScheduleMissed", [sev("critical", kind="base", host=HOST)]),
        ],
    ),
    case(
        {f'videodb_backup_last_run_ok{{kind="base",host="{HOST}"}}': "1 0 1"},
        [
            ("0s", "BackupFailed", []),
            ("10s", "BackupFailed", [sev("critical", kind="base", host=HOST)]),
            ("20s", "BackupFailed", []),
        ],
    ),
    case(
        {
            f'node_filesystem_avail_bytes{{instance="n:9100",mountpoint="/",host="{HOST}"}}': (
                "50 5x6"
            ),
            f'node_filesystem_size_bytes{{instance="n:9100",mountpoint="/",host="{HOST}"}}': (
                "100x7"
            ),
            # a filesystem holding nothing of the platform's: never
            f'node_filesystem_avail_bytes{{instance="n:9100",mountpoint="/x",host="{HOST}"}}': (
                "1x7"
            ),
            f'node_filesystem_size_bytes{{instance="n:9100",mountpoint="/x",host="{HOST}"}}': (
                "100x7"
            ),
            f'videodb_volume_info{{instance="n:9100",mountpoint="/",host="{HOST}",'
            f'holds="{MASTER} data and WAL"}}': "1x7",
        },
        [
            ("0s", "DiskSpaceLow", []),
            (
                "50s",
                "DiskSpaceLow",
                [
                    sev(
                        "critical",
                        instance="n:9100",
                        mountpoint="/",
                        host=HOST,
                        holds=f"{MASTER} data and WAL",
                    )
                ],
            ),
        ],
    ),
    case(
        {
            f'videodb_connections_used{{node="{MASTER}",host="{HOST}"}}': "10 90x6",
            f'videodb_connections_max{{node="{MASTER}",host="{HOST}"}}': "100x7",
        },
        [
            ("0s", "ConnectionsHigh", []),
            ("50s", "ConnectionsHigh", [sev("warning", node=MASTER, host=HOST)]),
        ],
    ),
    case(
        {
            f'videodb_http_requests_total{{service="metadata",host="{HOST}",status="500"}}': (
                "0+10x40"
            ),
            f'videodb_http_requests_total{{service="metadata",host="{HOST}",status="200"}}': (
                "0+10x40"
            ),
            f'videodb_http_requests_total{{service="streaming",host="{HOST}",status="200"}}': (
                "0+10x40"
            ),
        },
        [("5m", "AppErrorsHigh", [sev("warning", service="metadata", host=HOST)])],
    ),
    case(
        {
            **{
                f'videodb_http_request_seconds_bucket{{service="{svc}",host="{HOST}",'
                f'le="{le}"}}': values
                for svc in ("metadata", "upload")
                for le, values in (("0.5", "0x40"), ("2.5", "0+10x40"), ("+Inf", "0+10x40"))
            },
            **{
                f'videodb_http_request_seconds_bucket{{service="streaming",host="{HOST}",'
                f'le="{le}"}}': "0+10x40"
                for le in ("0.5", "2.5", "+Inf")
            },
        },
        [("5m", "AppLatencyHigh", [sev("warning", service="metadata", host=HOST)])],
    ),
]


def without_summaries(rules: dict[str, Any]) -> dict[str, Any]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return rules


@needs_promtool
def test_every_rule_fires_on_its_condition_and_only_then(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(without_summaries(alert_rules(settings()))))
    tests = tmp_path / "tests.yml"
    tests.write_text(
        yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "10s", "tests": CASES})
    )
    named = {r["alert"] for g in alert_rules(settings())["groups"] for r in g["rules"]}
    tested = {check["alertname"] for c in CASES for check in c["alert_rule_test"]}
    assert named == tested, f"rules without a case: {named - tested}"
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rendered_files_pass_promtool_and_amtool(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    s = settings()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(alert_rules(s)))
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = prometheus_config(s, layout)
    config["rule_files"] = [str(rules)]
    for job in config["scrape_configs"]:  # the TLS files exist once the platform made them
        job.pop("tls_config", None)
    prom = tmp_path / "prometheus.yml"
    prom.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [str(PROMTOOL), "check", "config", str(prom)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"patroni", "postgres", "etcd", "haproxy", "apps", "node"} <= jobs
    if AMTOOL is not None:
        manager = tmp_path / "alertmanager.yml"
        manager.write_text(yaml.safe_dump(alertmanager_config(s)))
        checked = subprocess.run(
            [AMTOOL, "check-config", str(manager)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        receivers = alertmanager_config(s)["receivers"]
        assert receivers[-1]["webhook_configs"][0]["url"] == "http://127.0.0.1:1/"
