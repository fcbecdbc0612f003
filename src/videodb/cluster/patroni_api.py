"""Patroni's REST API: the source of truth for roles (poll it; patronictl costs 0.4 s a call)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from videodb.cluster.tls import client_context
from videodb.config import NodeSpec, Settings
from videodb.errors import ClusterError


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | None) -> Role:
        if value in ("master", "primary", "leader", "standby_leader"):
            return cls.PRIMARY
        if value in ("replica", "sync_standby", "quorum_standby"):
            return cls.REPLICA
        return cls.UNKNOWN


@dataclass(frozen=True)
class MemberStatus:
    """One node as its own Patroni reports it."""

    name: str
    reachable: bool
    role: Role
    state: str  # running, starting, stopped, crashed, unreachable...
    replication_state: str | None  # 'streaming' on a healthy replica
    timeline: int | None
    error: str | None = None
    # etcd has no quorum and this primary keeps running because every member answered it
    failsafe_active: bool = False

    @property
    def healthy(self) -> bool:
        if not self.reachable or self.state != "running":
            return False
        return self.role is Role.PRIMARY or self.replication_state == "streaming"


class PatroniAPI:
    def __init__(self, settings: Settings, api_password: str | None = None) -> None:
        self.settings = settings
        self._auth = (
            "Basic " + base64.b64encode(f"patroni:{api_password}".encode()).decode()
            if api_password
            else None
        )

    def _url(self, node: NodeSpec, path: str) -> str:
        return f"https://{self.settings.node_address(node)}:{node.api_port}{path}"

    def get(self, node: NodeSpec, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """GET a JSON document; Patroni answers health endpoints with 503 and a body."""
        context = client_context(self.settings)
        try:
            with urllib.request.urlopen(
                self._url(node, path), timeout=timeout, context=context
            ) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"null")
            except json.JSONDecodeError:
                return exc.code, body.decode(errors="replace")

    def post(
        self, node: NodeSpec, path: str, payload: dict[str, Any], timeout: float = 60.0
    ) -> str:
        return self.send("POST", node, path, payload, timeout)

    def patch_config(self, payload: dict[str, Any], timeout: float = 10.0) -> str:
        """PATCH /config (cluster-wide settings in etcd) through the first node that answers."""
        last: ClusterError | None = None
        for node in self.settings.nodes:
            try:
                return self.send("PATCH", node, "/config", payload, timeout)
            except ClusterError as exc:
                last = exc
        raise last or ClusterError("no node to send the configuration to")

    def send(
        self, method: str, node: NodeSpec, path: str, payload: dict[str, Any], timeout: float
    ) -> str:
        """An authenticated request that changes state; raises ClusterError when refused."""
        request = urllib.request.Request(
            self._url(node, path),
            data=json.dumps(payload).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(
                request, timeout=timeout, context=client_context(self.settings)
            ) as resp:
                return str(resp.read().decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise ClusterError(
                f"Patroni on {node.name} refused {method} {path} (HTTP {exc.code}): {detail}"
            ) from exc
        except OSError as exc:
            raise ClusterError(
                f"Patroni on {node.name} ({self._url(node, path)}) is not reachable: {exc}"
            ) from exc

    def cluster_config(self) -> dict[str, Any] | None:
        """GET /config from the first node that answers (None if none does)."""
        for node in self.settings.nodes:
            try:
                status, doc = self.get(node, "/config")
            except OSError:
                continue
            if status == 200 and isinstance(doc, dict):
                return doc
        return None

    def member(self, node: NodeSpec) -> MemberStatus:
        try:
            _, doc = self.get(node, "/patroni")
        except OSError as exc:
            return MemberStatus(node.name, False, Role.UNKNOWN, "unreachable", None, None, str(exc))
        if not isinstance(doc, dict):
            return MemberStatus(node.name, True, Role.UNKNOWN, "unknown", None, None, str(doc))
        timeline = doc.get("timeline")
        return MemberStatus(
            name=node.name,
            reachable=True,
            role=Role.parse(doc.get("role")),
            state=str(doc.get("state", "unknown")),
            replication_state=doc.get("replication_state"),
            timeline=int(timeline) if timeline is not None else None,
            failsafe_active=bool(doc.get("failsafe_mode_is_active")),
        )

    def members(self) -> list[MemberStatus]:
        """Every node's own report, asked in parallel (a host cut off costs one timeout)."""
        nodes = self.settings.nodes
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return list(pool.map(self.member, nodes))

    def leader(self) -> NodeSpec | None:
        """The node whose Patroni says it is the running primary, if exactly one does."""
        primaries = [m for m in self.members() if m.role is Role.PRIMARY and m.state == "running"]
        if len(primaries) != 1:
            return None
        return self.settings.node(primaries[0].name)

    def require_leader(self, purpose: str) -> NodeSpec:
        """The running primary, or a ClusterError: "no running primary {purpose}; see status"."""
        primary = self.leader()
        if primary is None:
            raise ClusterError(f"no running primary {purpose}; see 'platform.sh status'")
        return primary
