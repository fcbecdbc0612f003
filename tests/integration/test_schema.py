"""The applications' schema: Alembic migrations through the write port, full-text search."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.harness import RunningCluster
from videodb.services.schema import head_revision

pytestmark = pytest.mark.integration


def test_migrations_apply_once_through_the_write_port(cluster: RunningCluster) -> None:
    first = cluster.cli_json("migrate")
    head = head_revision()
    assert head is not None and first["after"] == head
    with cluster.app_connect(cluster.write_port) as conn:  # 0003: what ffprobe read, a poster
        conn.execute(
            "SELECT duration_s, width, height, video_codec, audio_codec, has_poster "
            "FROM videos LIMIT 0"
        )
    again = cluster.cli_json("migrate")
    assert again == {"before": head, "after": head, "changed": False}
    with cluster.app_connect(cluster.write_port) as conn:
        row = conn.execute(
            "INSERT INTO videos (title, description, tags, sha256, size_bytes, content_type) "
            "VALUES ('Sunset over the harbour', 'Boats at dusk', ARRAY['timelapse', 'sea'], "
            "repeat('a', 64), 1024, 'video/mp4') RETURNING id"
        ).fetchone()
        assert row is not None
        found = conn.execute(
            "SELECT id FROM videos WHERE search @@ websearch_to_tsquery('english', %s)",
            ("timelapse harbour",),
        ).fetchall()
        assert [r[0] for r in found] == [row[0]]
        with pytest.raises(psycopg.errors.CheckViolation, match="videos_sha256_hex"):
            conn.execute(
                "INSERT INTO videos (title, sha256, size_bytes, content_type) "
                "VALUES ('bad', 'not-a-digest', 1, 'video/mp4')"
            )
