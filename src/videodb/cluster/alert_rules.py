"""The alert rules Prometheus evaluates, from `[monitoring]`'s thresholds.

Each alert carries the labels of what it is about (`node`, `host`, `service`, `kind`,
`mountpoint`) and a summary that says what was seen and where to look next. Each rule is checked
by `promtool test rules` (tests/unit/test_alert_rules.py); the ones the guide names fire and
resolve on a real cluster in tests/integration/test_monitoring.py.
"""

from __future__ import annotations

from typing import Any

from videodb.config import Settings

# Applications' requests whose latency is the client's own doing (an upload's body arrives
# at the client's pace) are left out of the p99.
SLOW_BY_NATURE = 'service!="upload"'


def _rule(
    name: str, expr: str, summary: str, *, severity: str, for_s: int, **labels: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": f"{for_s}s",
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary},
    }


def alert_rules(settings: Settings) -> dict[str, Any]:
    m = settings.monitoring
    hold = m.alert_for_s
    rules = [
        _rule(
            "ReplicationLagHigh",
            f"videodb_replication_lag_seconds > {m.lag_max_s:g}",
            "{{ $labels.node }} replays {{ $value | humanizeDuration }} behind its primary (limit "
            f"{m.lag_max_s:g} s); see 'platform.sh replication-status'",
            severity="warning",
            for_s=0,  # the lag is already a duration
        ),
        _rule(
            "NoLeader",
            "absent(patroni_primary == 1)",
            "no node leads the cluster: writes fail; see 'platform.sh status' and "
            "'platform.sh history'",
            severity="critical",
            for_s=hold,
        ),
        _rule(
            "FailoverHappened",
            # The highest timeline now above the lowest it was in the window: it rose. (0, a
            # node whose PostgreSQL is not up yet, is no timeline; a lower one when the newest
            # node is down is no failover.)
            "(max(patroni_postgres_timeline > 0) - min_over_time("
            f"max(patroni_postgres_timeline > 0)[{m.failover_window_m}m:]) > 0)"
            " * on() group_left(node, host) topk(1, patroni_primary == 1)",
            f"the timeline changed in the last {m.failover_window_m} min (a failover or "
            "switchover): {{ $labels.node }} leads now; see 'platform.sh history'",
            severity="warning",
            for_s=0,
        ),
        _rule(
            "TargetDown",
            "up == 0",
            "{{ $labels.job }} on {{ $labels.host }}{{ with $labels.node }} ({{ . }}){{ end }}"
            "{{ with $labels.service }} ({{ . }}){{ end }} does not answer "
            "({{ $labels.instance }}); see 'platform.sh status' and 'platform.sh logs'",
            severity="critical",
            for_s=hold,
        ),
        _rule(
            "PostgresDown",
            "pg_up == 0",
            "PostgreSQL of {{ $labels.node }} refuses its exporter's connection; see "
            "'platform.sh logs {{ $labels.node }}'",
            severity="critical",
            for_s=hold,
        ),
        _rule(
            "HAProxyBackendEmpty",
            'haproxy_backend_active_servers{proxy!="stats"} == 0',
            "HAProxy on {{ $labels.host }} has no live server for {{ $labels.proxy }}; see "
            "'platform.sh haproxy-stats'",
            severity="critical",
            for_s=hold,
        ),
        _rule(
            "HAProxyServerDown",
            # The write backend lists every node and only the primary is UP there, by design.
            'haproxy_server_status{proxy!="postgres_write",state="DOWN"} == 1',
            "HAProxy on {{ $labels.host }} marks {{ $labels.server }} DOWN in {{ $labels.proxy }}",
            severity="warning",
            for_s=hold,
        ),
        _rule(
            "EtcdUnhealthy",
            'etcd_server_has_leader == 0 or up{job="etcd"} == 0',
            "etcd on {{ $labels.host }} has no leader or does not answer: Patroni cannot renew "
            "its lock; see 'platform.sh logs etcd'",
            severity="critical",
            for_s=hold,
        ),
        _rule(
            "WalArchivingFailing",
            "videodb_archiver_failing == 1",
            "WAL archiving fails on {{ $labels.node }} (its last attempt failed); see "
            "'platform.sh backup list' and 'platform.sh logs {{ $labels.node }}'",
            severity="critical",
            for_s=0,
        ),
        _rule(
            "WalArchivingBehind",
            f"videodb_archiver_ready_segments > {m.archive_ready_max}",
            "{{ $value }} WAL files of {{ $labels.node }} wait to be archived (limit "
            f"{m.archive_ready_max}); see 'platform.sh backup list'",
            severity="warning",
            for_s=hold,
        ),
        _rule(
            "BackupScheduleMissed",
            "time() > videodb_backup_due_timestamp_seconds"
            " + 0.5 * videodb_backup_schedule_interval_seconds",
            "no successful {{ $labels.kind }} backup since one was due by the schedule (half an "
            "interval ago); see 'platform.sh backup list' and 'platform.sh logs "
            "backup-scheduler'",
            severity="critical",
            for_s=0,
        ),
        _rule(
            "BackupFailed",
            "videodb_backup_last_run_ok == 0",
            "the last scheduled {{ $labels.kind }} backup failed; see 'platform.sh backup list'",
            severity="critical",
            for_s=0,
        ),
        _rule(
            "DiskSpaceLow",
            "(100 * node_filesystem_avail_bytes / node_filesystem_size_bytes"
            f" < {m.disk_free_min_percent:g})"
            " * on(instance, mountpoint) group_left(holds) videodb_volume_info",
            '{{ $value | printf "%.1f" }}% free on {{ $labels.mountpoint }} of '
            "{{ $labels.host }} (holds {{ $labels.holds }}; limit "
            f"{m.disk_free_min_percent:g}%)",
            severity="critical",
            for_s=hold,
        ),
        _rule(
            "ConnectionsHigh",
            "100 * videodb_connections_used / videodb_connections_max"
            f" > {m.connections_max_percent:g}",
            '{{ $labels.node }} uses {{ $value | printf "%.0f" }}% of max_connections '
            f"(limit {m.connections_max_percent:g}%)",
            severity="warning",
            for_s=hold,
        ),
        _rule(
            "AppErrorsHigh",
            'sum by (host, service) (rate(videodb_http_requests_total{status=~"5.."}[5m]))'
            " / sum by (host, service) (rate(videodb_http_requests_total[5m]))"
            f" > {m.error_ratio_max:g}",
            "{{ $value | humanizePercentage }} of the {{ $labels.service }} application's "
            "answers on {{ $labels.host }} are 5xx (limit "
            f"{m.error_ratio_max:.0%}); see 'platform.sh logs {{{{ $labels.service }}}}'",
            severity="warning",
            for_s=hold,
        ),
        _rule(
            "AppLatencyHigh",
            "histogram_quantile(0.99, sum by (host, service, le) "
            f"(rate(videodb_http_request_seconds_bucket{{{SLOW_BY_NATURE}}}[5m])))"
            f" > {m.p99_max_s:g}",
            "the {{ $labels.service }} application's p99 on {{ $labels.host }} is "
            "{{ $value | humanizeDuration }} (limit "
            f"{m.p99_max_s:g} s)",
            severity="warning",
            for_s=hold,
        ),
    ]
    # One per node: a replica that does not stream from the primary (stopped, cut off,
    # crashed), while some node leads.
    for node in settings.nodes:
        host = settings.node_host(node).name
        rules.append(
            _rule(
                "ReplicaNotStreaming",
                "count(patroni_primary == 1) > 0 unless on() ("
                f'max(patroni_postgres_streaming{{node="{node.name}"}}) == 1'
                f' or max(patroni_primary{{node="{node.name}"}}) == 1)',
                f"{node.name} on {host} is not streaming from the primary; see "
                f"'platform.sh replication-status' and 'platform.sh logs {node.name}'",
                severity="critical",
                for_s=hold,
                node=node.name,
                host=host,
            )
        )
    return {"groups": [{"name": "videodb", "rules": rules}]}
