"""The applications' video store, chosen by the platform's `[storage]` settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from videodb.services.local_store import LocalStore
from videodb.services.s3_store import S3Settings, S3Store
from videodb.services.storage import VideoStore


class StoreSettings(BaseModel):
    """Part of conf/apps.json: the local directory, or how to reach the S3 store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "seaweedfs", "s3"] = "local"
    local_dir: Path
    s3: S3Settings | None = None
    sweep_grace_s: float = 3600.0


def open_store(settings: StoreSettings, max_bytes: int) -> VideoStore:
    if settings.backend == "local":
        return LocalStore(settings.local_dir, max_bytes)
    assert settings.s3 is not None, f"backend {settings.backend} without S3 settings"
    return S3Store(settings.s3, max_bytes)
