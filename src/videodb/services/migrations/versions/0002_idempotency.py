"""idempotency keys: the stored result of each keyed write, and when it was made (for expiry)

Revision ID: 0002
Revises: 0001

Platforms that ran an earlier version already have the table (the data layer created it at
start): IF NOT EXISTS keeps their keys.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS videodb_idempotency ("
        " key text PRIMARY KEY,"
        " result jsonb,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS videodb_idempotency_created_at "
        "ON videodb_idempotency (created_at)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS videodb_idempotency")
