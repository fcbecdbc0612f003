"""etcd membership across hosts, through etcd's v3 JSON API: list, add as a learner, promote.

A host that joins a running cluster is added as a learner first (it receives the log but does not
vote, so a slow catch-up cannot cost the quorum), then promoted to a voting member once etcd says
it is in sync.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from videodb.cluster.health import etcd_member_healthy
from videodb.cluster.render import etcd_member_name, etcd_peer_url
from videodb.cluster.tls import client_context
from videodb.config import HostSpec, Settings
from videodb.errors import ClusterError
from videodb.waiting import wait_for

UNHEALTHY_WAIT_S = 60.0


@dataclass(frozen=True)
class EtcdMember:
    id: str
    name: str  # empty for a learner that has not started yet
    peer_urls: tuple[str, ...]
    learner: bool


@dataclass(frozen=True)
class Endpoint:
    """One member's client URL, and the TLS context (cluster CA, this host's certificate)."""

    url: str
    context: ssl.SSLContext


def _post(endpoint: Endpoint, path: str, payload: dict[str, Any], timeout: float = 5.0) -> Any:
    url = endpoint.url
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=endpoint.context) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise ClusterError(f"etcd at {url} refused {path}: {detail}") from exc
    except OSError as exc:
        raise ClusterError(f"etcd at {url} is not reachable ({exc})") from exc


def healthy_member(settings: Settings, exclude: str | None = None) -> Endpoint:
    """An etcd member that answers with a quorum (not `exclude`'s)."""
    context = client_context(settings)
    for host in settings.etcd_hosts():
        if host.name == exclude:
            continue
        url = settings.etcd_client_url(host)
        if etcd_member_healthy(url, context):
            return Endpoint(url, context)
    raise ClusterError(
        "no etcd member of the cluster answers with a quorum; start the etcd hosts first "
        "('platform.sh --cluster FILE --host NAME start video' on each)"
    )


def members(url: Endpoint) -> list[EtcdMember]:
    doc = _post(url, "/v3/cluster/member/list", {})
    return [
        EtcdMember(
            id=str(m.get("ID", "")),
            name=str(m.get("name", "")),
            peer_urls=tuple(m.get("peerURLs", [])),
            learner=bool(m.get("isLearner", False)),
        )
        for m in doc.get("members", [])
    ]


def member_for(settings: Settings, host: HostSpec, listed: list[EtcdMember]) -> EtcdMember | None:
    peer = etcd_peer_url(settings, host)
    return next((m for m in listed if peer in m.peer_urls), None)


def add_learner(settings: Settings, host: HostSpec) -> EtcdMember:
    """Register `host`'s etcd member as a learner (nothing to do if it is a member already)."""
    url = healthy_member(settings, exclude=host.name)
    existing = member_for(settings, host, members(url))
    if existing is not None:
        return existing
    payload = {"peerURLs": [etcd_peer_url(settings, host)], "isLearner": True}

    def attempt() -> Any:
        # etcd refuses a change of membership ("unhealthy cluster") until every member has been
        # connected for a few seconds, e.g. just after a network heals.
        try:
            return _post(url, "/v3/cluster/member/add", payload)
        except ClusterError as exc:
            if "unhealthy cluster" in str(exc):
                return None
            raise

    doc = wait_for(
        attempt,
        timeout=UNHEALTHY_WAIT_S,
        what="etcd accepting a new member (it reports an unhealthy cluster)",
        hint="see 'platform.sh status': every etcd member must be up and connected",
        interval=1.0,
    )
    added = doc.get("member", {})
    return EtcdMember(str(added.get("ID", "")), "", (etcd_peer_url(settings, host),), True)


def promote(url: Endpoint, member: EtcdMember) -> bool:
    """Promote a learner; False while etcd says it is not in sync with the leader yet."""
    try:
        _post(url, "/v3/cluster/member/promote", {"ID": member.id})
    except ClusterError as exc:
        if "in sync with" in str(exc) or "not ready" in str(exc):
            return False
        raise
    return True


def remove(url: Endpoint, member: EtcdMember) -> None:
    _post(url, "/v3/cluster/member/remove", {"ID": member.id})


def initial_cluster(settings: Settings, this: HostSpec, listed: list[EtcdMember]) -> str:
    """--initial-cluster for a member joining a running cluster: every member etcd lists (the
    joining one under its own name)."""
    parts = []
    mine = etcd_peer_url(settings, this)
    for m in listed:
        for peer in m.peer_urls:
            name = etcd_member_name(settings, this) if peer == mine else m.name
            if name:
                parts.append(f"{name}={peer}")
    return ",".join(parts)
