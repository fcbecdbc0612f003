"""Benchmark: backup and restore throughput on a database of about 1 GB (pgbench scale 70).

    .venv/bin/python -m bench.backup_restore [--scale 70]

On one throwaway cluster (free ports, temporary directory, no applications):
  plain copy       cp -a of the master's data directory: the ceiling (same bytes, no protocol)
  base backup      backup-video --physical (pg_basebackup, plain format, WAL streamed in)
  verify           backup verify: pg_verifybackup, then a copy started as a throwaway instance
  restore (PITR)   restore --latest: checksums, copy, recovery through the archive, swap, start
  dump / restore   the logical pair: pg_dump custom format, pg_restore through a temporary
                   database (indexes rebuilt), measured against the database's size
MB/s are of the database's size on disk (pg_database_size), except the copies (bytes copied).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time

from bench.proxy_tps import pgbench
from videodb.backup_repo import repo_for, tree_size
from videodb.backups import logical, physical, restore, verify
from videodb.cluster import lifecycle
from videodb.cluster.pg import connect_superuser
from videodb.sandbox import sandbox
from videodb.secrets import load_secrets


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:8.1f} MB/s  ({seconds:6.1f} s for {nbytes / 1e6:,.0f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70)
    args = parser.parse_args()
    with sandbox("videodb-bench-", apps="autostart = false\n") as box:
        s, layout = box.settings, box.layout
        try:
            lifecycle.start(s, layout)
            secrets = load_secrets(layout)
            began = time.monotonic()
            pgbench(s, s.haproxy.write_port, ["-i", "-q", "-s", str(args.scale)])
            print(f"pgbench -i -s {args.scale}: {time.monotonic() - began:.1f} s")
            master = s.nodes[0]
            with connect_superuser(s, secrets, master) as conn:
                conn.execute("CHECKPOINT")
                row = conn.execute("SELECT pg_database_size(%s)", (s.database.name,)).fetchone()
            assert row is not None
            db_bytes = int(str(row[0]))
            data_dir = layout.node_data(master.name)
            print(f"database {s.database.name}: {db_bytes / 1e6:,.0f} MB on disk")

            copy_to = box.workdir / "plain-copy"
            began = time.monotonic()
            subprocess.run(["cp", "-a", str(data_dir), str(copy_to)], check=True)
            copy_s = time.monotonic() - began
            copied = tree_size(copy_to)
            shutil.rmtree(copy_to)
            print(f"  plain copy of the data dir {rate(copied, copy_s)}")

            began = time.monotonic()
            base = physical.take_base_backup(s, layout, secrets)
            base_s = time.monotonic() - began
            print(f"  base backup                {rate(base.size_bytes, base_s)}")
            ceiling = copied / copy_s
            print(
                f"    against the plain copy:  {base.size_bytes / base_s / ceiling:.2f}x its MB/s"
            )

            began = time.monotonic()
            verify.verify_backup(s, layout, base.id)
            print(f"  verify (checks + start)    {rate(base.size_bytes, time.monotonic() - began)}")

            began = time.monotonic()
            marks: list[tuple[float, str]] = []
            restore.restore_physical(
                s,
                layout,
                base,
                restore.RecoveryTarget(),
                progress=lambda m: marks.append((time.monotonic() - began, m)),
            )
            restore_s = time.monotonic() - began
            print(f"  restore --latest (all)     {rate(base.size_bytes, restore_s)}")
            restore_ratio = base.size_bytes / restore_s / ceiling
            print(f"    against the plain copy:  {restore_ratio:.2f}x its MB/s")
            phases = {
                "copy of the backup": ("copying", "recovering"),
                "recovery (archive replay)": ("recovering", "recovered"),
                "stop, swap": ("recovered", "starting:"),
                "start, replica clone, healthy": ("starting:", None),
            }
            for name, (first, last) in phases.items():
                t0 = next(t for t, m in marks if m.startswith(first))
                t1 = next((t for t, m in marks if last and m.startswith(last)), restore_s)
                print(f"    {name:30s} {t1 - t0:6.1f} s")

            began = time.monotonic()
            dump = logical.dump_database(s, layout, secrets)
            dump_s = time.monotonic() - began
            dump_mb = dump.size_bytes / 1e6
            print(f"  pg_dump                    {rate(db_bytes, dump_s)}  file {dump_mb:,.0f} MB")
            began = time.monotonic()
            restore.restore_logical(s, layout, dump)
            print(f"  pg_restore (swap)          {rate(db_bytes, time.monotonic() - began)}")
            repo = repo_for(s, layout)
            print(f"archived WAL: {repo.wal_bytes() / 1e6:,.0f} MB")
        finally:
            lifecycle.stop(s, layout)


if __name__ == "__main__":
    main()
