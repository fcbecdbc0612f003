"""What an application process needs, written by the platform into conf/apps.json (0600).

The applications run as the service user, which may not reach the checkout or its config file:
everything they need, the database password included, is in this one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from videodb.config import ServiceName, Settings
from videodb.db import DataSourceSettings
from videodb.errors import ConfigError
from videodb.layout import StateLayout
from videodb.services.ops import OpsSettings
from videodb.services.stores import StoreSettings

SERVICES: tuple[ServiceName, ...] = ("upload", "metadata", "streaming")


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    ports: dict[ServiceName, Annotated[int, Field(ge=1, le=65535)]]
    web_port: Annotated[int, Field(ge=1, le=65535)]
    datasource: DataSourceSettings
    storage: StoreSettings
    max_upload_bytes: Annotated[int, Field(ge=1)]
    ops: OpsSettings = Field(default_factory=OpsSettings)
    view_flush_s: Annotated[float, Field(gt=0)] = 2.0
    idempotency_ttl_s: Annotated[float, Field(gt=0)] = 24 * 3600.0

    @classmethod
    def for_platform(
        cls,
        settings: Settings,
        layout: StateLayout,
        storage: StoreSettings,
        ops: OpsSettings | None = None,
    ) -> AppConfig:
        """`storage`: how this host reaches the videos' store (cluster/seaweedfs.py); `ops`:
        where the operations page reads from (cluster/monitoring.py)."""
        a = settings.apps
        return cls(
            host=settings.address,
            ports=a.service_ports(),
            web_port=a.web_port,
            datasource=DataSourceSettings.for_platform(
                settings, password_file=layout.app_password_file()
            ),
            storage=storage,
            ops=ops or OpsSettings(),
            max_upload_bytes=a.max_upload_mb * 1024 * 1024,
            view_flush_s=a.view_flush_s,
            idempotency_ttl_s=a.idempotency_ttl_h * 3600,
        )

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        data["datasource"]["password"] = self.datasource.password.get_secret_value()
        if self.storage.s3 is not None:
            data["storage"]["s3"]["secret_key"] = self.storage.s3.secret_key.get_secret_value()
        return json.dumps(data, indent=2)

    @classmethod
    def load(cls, path: Path) -> AppConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"application config {path} cannot be read ({exc.strerror}); it is written by "
                "'platform.sh start apps'"
            ) from exc
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"application config {path} is invalid: {exc}") from exc


def storage_dir(settings: Settings, layout: StateLayout) -> Path:
    """The local backend's directory: apps.storage_dir, else videos/ in the state directory."""
    return settings.apps.storage_dir or layout.root / "videos"
