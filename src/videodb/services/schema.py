"""Apply the schema's Alembic migrations, through the writer (the write port) only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from videodb.db import DataLayer

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def migrate(layer: DataLayer) -> MigrationResult:
    """Upgrade to the newest revision on the writer; a second call changes nothing."""
    with layer.writer_engine.begin() as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        config = _config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    return MigrationResult(before, after)
