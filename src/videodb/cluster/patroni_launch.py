"""Run Patroni with its shutdown poll shortened (`patroni.stop_poll_s`, 0.25 s; Patroni's is 1 s).

A switchover stops PostgreSQL on the master: Patroni signals the postmaster, then runs
`SELECT 1` on its own connection until the connection breaks, sleeping
`patroni.postgresql.STOP_POLLING_INTERVAL` between tries. The first try comes microseconds after
the signal and still succeeds, so every switchover waits one whole poll before Patroni looks for
the end of the shutdown; writes are paused for all of it. The constant is read at each sleep, so
setting it before Patroni starts is enough.

Why 0.25 and not less: the same constant paces Patroni's look at pg_control while the postmaster
still runs. A look that finds pg_control "shut down" before the postmaster has exited (the ~40 ms
while the WAL senders hand the shutdown checkpoint to the replicas) runs Patroni's `on_shutdown`,
which sleeps a fixed second before releasing the leader key. A fast shutdown here takes ~0.1 s
with that window at its end, so a 0.1 s poll lands in it every time (switchover pause 1.94 s,
worse than Patroni's own 1.69 s); 0.25 s lands after the exit (0.92 s); 0.4 s gives 1.18 s
(bench.failover --stop-poll, docs/benchmarks.md). A shutdown longer than the poll can still land
in the window and pay that second, as with Patroni's own poll.

    python -m videodb.cluster.patroni_launch [--stop-poll=SECONDS] CONFIG

The attribute is checked first: a Patroni release without it is refused with a message, never
run with the slow poll unnoticed (pyproject.toml bounds Patroni to 4.x).
"""

from __future__ import annotations

import sys

STOP_POLL_S = 0.25
FLAG = "--stop-poll="


def tune(seconds: float = STOP_POLL_S) -> None:
    import patroni.postgresql as postgresql

    if not isinstance(getattr(postgresql, "STOP_POLLING_INTERVAL", None), int | float):
        raise SystemExit(
            "patroni.postgresql.STOP_POLLING_INTERVAL is missing from this Patroni release; "
            "videodb.cluster.patroni_launch needs updating for it (or set patroni.stop_poll_s "
            "= 1 and run the 'patroni' script)"
        )
    postgresql.STOP_POLLING_INTERVAL = seconds


def main(argv: list[str]) -> None:
    """`argv`: our flag (optional), then Patroni's own arguments."""
    seconds = STOP_POLL_S
    if argv and argv[0].startswith(FLAG):
        seconds = float(argv.pop(0)[len(FLAG) :])
    tune(seconds)
    from patroni.__main__ import main as patroni_main

    sys.argv = ["patroni", *argv]
    patroni_main()


if __name__ == "__main__":
    main(sys.argv[1:])
