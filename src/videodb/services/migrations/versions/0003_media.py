"""media: what ffprobe read of each video (duration, size, codecs) and whether it has a poster

Revision ID: 0003
Revises: 0002

Videos uploaded before this revision keep NULL here (the page shows no duration for them).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("videos", sa.Column("duration_s", sa.Float(), nullable=True))
    op.add_column("videos", sa.Column("width", sa.Integer(), nullable=True))
    op.add_column("videos", sa.Column("height", sa.Integer(), nullable=True))
    op.add_column("videos", sa.Column("video_codec", sa.String(50), nullable=True))
    op.add_column("videos", sa.Column("audio_codec", sa.String(50), nullable=True))
    op.add_column(
        "videos",
        sa.Column("has_poster", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    for column in ("has_poster", "audio_codec", "video_codec", "height", "width", "duration_s"):
        op.drop_column("videos", column)
