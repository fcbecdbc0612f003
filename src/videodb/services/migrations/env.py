"""Alembic environment: migrations run on the connection the caller passes (the writer)."""

from __future__ import annotations

from alembic import context

from videodb.services.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through videodb.services.schema.migrate(), not alembic")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
