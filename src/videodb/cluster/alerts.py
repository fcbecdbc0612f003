"""What fires: Prometheus's alerts (pending and firing), read from this host's Prometheus or the
first monitoring host's, and Prometheus's HTTP API for the operations page."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from videodb.cluster.monitoring import target
from videodb.config import Settings
from videodb.errors import ClusterError, ConfigError

# Labels every alert of one platform has in common: not worth showing.
_COMMON = {"alertname", "severity", "cluster", "job", "instance", "server"}


@dataclass
class Alert:
    name: str
    state: str  # "firing" or "pending" (its condition holds, not yet for monitoring.alert_for_s)
    severity: str
    summary: str
    since: str  # when the condition began (ISO 8601)
    value: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def about(self) -> str:
        """The labels that say what it is about: node=..., host=..."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()) if k not in _COMMON)


def prometheus_url(settings: Settings) -> str:
    if not settings.monitoring.enabled:
        raise ConfigError(
            "monitoring is off (monitoring.enabled = false): nothing evaluates alerts; turn it "
            "on in the config file and run 'platform.sh start video'"
        )
    hosts = settings.monitoring_hosts()
    this = settings.this_host()
    host = this if this in hosts else hosts[0]
    return f"http://{target(host.address, settings.monitoring.prometheus_port)}"


def prometheus_get(settings: Settings, path: str, params: dict[str, str] | None = None) -> Any:
    """GET Prometheus's API; its `data`."""
    url = prometheus_url(settings) + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClusterError(
            f"Prometheus at {prometheus_url(settings)} does not answer ({reason}); see "
            "'platform.sh status' and 'platform.sh logs prometheus'"
        ) from exc
    if body.get("status") != "success":
        raise ClusterError(f"Prometheus refused {path}: {body.get('error', body)}")
    return body["data"]


def active_alerts(settings: Settings) -> list[Alert]:
    """Every alert whose condition holds now, firing first, then by name."""
    found = []
    for raw in prometheus_get(settings, "/api/v1/alerts")["alerts"]:
        labels = dict(raw.get("labels", {}))
        found.append(
            Alert(
                name=labels.get("alertname", "?"),
                state=raw.get("state", "?"),
                severity=labels.get("severity", ""),
                summary=raw.get("annotations", {}).get("summary", ""),
                since=raw.get("activeAt", ""),
                value=str(raw.get("value", "")),
                labels=labels,
            )
        )
    return sorted(found, key=lambda a: (a.state != "firing", a.name, a.about))
