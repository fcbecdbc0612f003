"""videos: metadata of uploaded videos, with full-text search

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            primary_key=True,
            server_default=sa.text("gen_random_uuid()"),
        ),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("views", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("search", postgresql.TSVECTOR(), nullable=True),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="videos_sha256_hex"),
        sa.CheckConstraint("size_bytes > 0", name="videos_size_positive"),
        sa.CheckConstraint("length(title) > 0", name="videos_title_not_empty"),
    )
    op.create_index("ix_videos_sha256", "videos", ["sha256"])
    op.create_index("ix_videos_created_at", "videos", ["created_at"])
    op.create_index("ix_videos_search", "videos", ["search"], postgresql_using="gin")
    op.create_index("ix_videos_tags", "videos", ["tags"], postgresql_using="gin")
    # array_to_string is not immutable, so a generated column cannot index tags: a trigger does.
    op.execute(
        """
        CREATE FUNCTION videos_search_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search :=
                setweight(to_tsvector('english', coalesce(NEW.title, '')), 'A') ||
                setweight(to_tsvector('english', array_to_string(NEW.tags, ' ')), 'A') ||
                setweight(to_tsvector('english', coalesce(NEW.description, '')), 'B');
            NEW.updated_at := now();
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER videos_search BEFORE INSERT OR UPDATE OF title, description, tags "
        "ON videos FOR EACH ROW EXECUTE FUNCTION videos_search_update()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS videos_search ON videos")
    op.execute("DROP FUNCTION IF EXISTS videos_search_update()")
    op.drop_table("videos")
