"""A clean libpq environment for every PostgreSQL tool and connection the platform makes.

libpq reads `PGPASSWORD`, `PGUSER`, `PGSERVICE`, `PGSSLMODE`... from the environment before it
reads a passfile, and fills in whatever a connection string leaves out. An operator's shell that
exports one of them (the README shows `PGPASSWORD=... psql`) would otherwise change what the
platform's own pg_dump, pg_basebackup, psql, Patroni (pg_rewind, its own connections) and
applications do. Everything they need is passed explicitly instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

# Every variable libpq reads (PostgreSQL 15 and later, "Environment Variables"), and PGDATA, which
# pg_ctl and initdb read. psql's own preferences (PAGER, PSQLRC) are the operator's and stay.
LIBPQ_VARIABLES: frozenset[str] = frozenset(
    {
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGCHANNELBINDING",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGSSLMODE",
        "PGREQUIRESSL",
        "PGSSLCOMPRESSION",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGSSLROOTCERT",
        "PGSSLCRL",
        "PGSSLCRLDIR",
        "PGSSLSNI",
        "PGREQUIREPEER",
        "PGSSLMINPROTOCOLVERSION",
        "PGSSLMAXPROTOCOLVERSION",
        "PGGSSENCMODE",
        "PGKRBSRVNAME",
        "PGGSSLIB",
        "PGCONNECT_TIMEOUT",
        "PGCLIENTENCODING",
        "PGTARGETSESSIONATTRS",
        "PGLOADBALANCEHOSTS",
        "PGSSLNEGOTIATION",
        "PGREQUIREAUTH",
        "PGDATESTYLE",
        "PGTZ",
        "PGGEQO",
        "PGSYSCONFDIR",
        "PGLOCALEDIR",
        "PGDATA",
    }
)


def is_libpq_variable(name: str) -> bool:
    return name in LIBPQ_VARIABLES


def clean_env(base: Mapping[str, str] | None = None, **explicit: str) -> dict[str, str]:
    """`base` (default: this process's environment) without a libpq variable, plus `explicit`."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not is_libpq_variable(k)}
    env.update(explicit)
    return env


def scrub(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove every libpq variable from `environ` (default: this process's, which children and
    in-process libpq connections inherit). Returns the names removed."""
    target = os.environ if environ is None else environ
    removed = sorted(k for k in target if is_libpq_variable(k))
    for name in removed:
        del target[name]
    return removed
