"""The applications' two datasources (the guide's application.yml and application-replica.yml)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from videodb.config import DEV_APP_PASSWORD, Settings
from videodb.errors import ConfigError
from videodb.layout import resolve_layout, tls_files

Profile = Literal["development", "replica"]
# haproxy: the guide's datasources, the write and read ports. direct: libpq multi-host straight to
# the PostgreSQL nodes (the writer asks for target_session_attrs=read-write, the reader for
# prefer-standby with load_balance_hosts=random), no proxy hop.
Routing = Literal["haproxy", "direct"]


class DataSourceSettings(BaseModel):
    """Where the writer and the reader connect, their pools, and the consistency knobs.

    development: both go straight to the master (5433). replica: writer 5435, reader 5436.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Profile = "replica"
    host: str = "127.0.0.1"
    writer_port: Annotated[int, Field(ge=1, le=65535)] = 5435
    reader_port: Annotated[int, Field(ge=1, le=65535)] = 5436
    dbname: str = "video_platform"
    username: str = "upload_user"
    password: SecretStr = SecretStr(DEV_APP_PASSWORD)
    # Read at every new connection when set (one password a line, tried in order: during
    # 'rotate password app' it holds the new and the old), so a rotation needs no restart.
    password_file: Path | None = None
    # TLS: the platform sets verify-full against its CA. `tls_name` is the name the server
    # certificate must hold when `host` is an address (HAProxy's): libpq connects to hostaddr=host
    # and verifies host=tls_name.
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: Path | None = None
    tls_name: str | None = None
    routing: Routing = "haproxy"
    # direct routing: every PostgreSQL node, "address:port" (VIDEODB_DB_NODES: comma-separated)
    nodes: tuple[str, ...] = ()
    writer_pool_size: Annotated[int, Field(ge=1, le=500)] = 10
    reader_pool_size: Annotated[int, Field(ge=1, le=500)] = 15
    min_idle: Annotated[int, Field(ge=0, le=500)] = 5
    connect_timeout_s: Annotated[int, Field(ge=1, le=60)] = 2
    token_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 100
    max_lag_s: Annotated[float, Field(gt=0)] | None = None
    retry_deadline_s: Annotated[float, Field(gt=0, le=600)] = 30.0

    @field_validator("nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return value

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for node in value:
            address, _, port = node.rpartition(":")
            if not address or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{node!r} is not address:port (e.g. 10.0.0.5:5433)")
        return value

    @model_validator(mode="after")
    def _direct_needs_nodes(self) -> DataSourceSettings:
        if self.routing == "direct" and not self.nodes:
            raise ValueError(
                "routing 'direct' connects to the PostgreSQL nodes themselves: list them in "
                "nodes (address:port each)"
            )
        return self

    def node_addresses(self) -> tuple[list[str], list[str]]:
        """The direct nodes' addresses and ports, in order."""
        pairs = [n.rpartition(":") for n in self.nodes]
        return [a for a, _, _ in pairs], [p for _, _, p in pairs]

    @classmethod
    def for_platform(
        cls, settings: Settings, profile: Profile = "replica", **overrides: object
    ) -> DataSourceSettings:
        """Datasources pointing at a platform config's ports (the first node is the master)."""
        master = settings.nodes[0].port
        db = settings.database
        dev = profile == "development"
        values: dict[str, object] = {
            "profile": profile,
            "host": settings.node_address(settings.nodes[0]) if dev else settings.address,
            "writer_port": master if profile == "development" else settings.haproxy.write_port,
            "reader_port": master if profile == "development" else settings.haproxy.read_port,
            "dbname": db.name,
            "username": db.app_user,
            "password": db.app_password,
            "sslmode": "verify-full",
            "sslrootcert": tls_files(resolve_layout(settings)).ca,
            "tls_name": settings.postgres_tls_name(),
            "routing": settings.apps.routing,
            "nodes": tuple(f"{settings.node_address(n)}:{n.port}" for n in settings.nodes),
        }
        values.update(overrides)
        return cls.model_validate(values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DataSourceSettings:
        """VIDEODB_DB_PROFILE, DB_USERNAME, DB_PASSWORD, VIDEODB_DB_<FIELD> (e.g. _WRITER_PORT)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        profile = env.get("VIDEODB_DB_PROFILE", "replica")
        values["profile"] = profile
        if profile == "development":
            values["writer_port"] = values["reader_port"] = 5433
        if "DB_USERNAME" in env:
            values["username"] = env["DB_USERNAME"]
        if "DB_PASSWORD" in env:
            values["password"] = env["DB_PASSWORD"]
        for name in cls.model_fields:
            var = f"VIDEODB_DB_{name.upper()}"
            if var in env and name != "profile":
                values[name] = env[var]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(
                f"invalid datasource settings from the environment: {problems}"
            ) from exc
