"""Connections to one node as the superuser, and the application role and database."""

from __future__ import annotations

import psycopg
from psycopg import errors, sql

from videodb.config import NodeSpec, Settings
from videodb.errors import ClusterError
from videodb.layout import resolve_layout, tls_files
from videodb.secrets import ClusterSecrets

# What the data layer's read-your-writes check asks a node: is it a replica, how far has it
# replayed (or written, on a primary), on which timeline, and how stale is it. SECURITY DEFINER
# because pg_stat_wal_receiver hides its columns from ordinary roles.
POSITION_FUNCTION = """
CREATE OR REPLACE FUNCTION public.videodb_position(
    OUT in_recovery boolean, OUT lsn pg_lsn, OUT timeline integer, OUT lag_s double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    in_recovery := pg_is_in_recovery();
    IF in_recovery THEN
        lsn := pg_last_wal_replay_lsn();
        SELECT received_tli INTO timeline FROM pg_stat_wal_receiver;
        IF timeline IS NULL THEN
            SELECT timeline_id INTO timeline FROM pg_control_checkpoint();
        END IF;
        IF pg_last_wal_receive_lsn() IS NOT DISTINCT FROM lsn THEN
            lag_s := 0;
        ELSE
            lag_s := extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp());
        END IF;
    ELSE
        lsn := pg_current_wal_lsn();
        timeline := ('x' || substr(pg_walfile_name(lsn), 1, 8))::bit(32)::integer;
        lag_s := 0;
    END IF;
END
$fn$
"""


def connect_superuser(
    settings: Settings,
    secrets: ClusterSecrets,
    node: NodeSpec,
    dbname: str = "postgres",
    timeout: float = 3.0,
) -> psycopg.Connection[tuple[object, ...]]:
    """A superuser connection over TCP; the password goes in the connection, never argv.

    A connection that cannot be made is a ClusterError naming the node and its log.
    """
    try:
        return psycopg.connect(
            host=settings.node_address(node),
            port=node.port,
            user=settings.database.superuser,
            password=secrets.superuser_password,
            dbname=dbname,
            connect_timeout=max(1, int(timeout)),
            autocommit=True,
            application_name="videodb-cli",
            sslmode="verify-full",
            sslrootcert=str(tls_files(resolve_layout(settings)).ca),
        )
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or ["no message"])[-1].strip()
        raise ClusterError(
            f"cannot connect to {node.name} ({settings.node_address(node)}:{node.port}, database "
            f"{dbname}) as {settings.database.superuser}: {first}; see 'platform.sh status' and "
            f"'platform.sh logs {node.name}'"
        ) from exc


def ensure_application_database(
    settings: Settings, secrets: ClusterSecrets, primary: NodeSpec
) -> None:
    """Create or update the application role (LOGIN only) and the database it owns.

    The password is sent as a SCRAM verifier computed here, so its clear text never reaches the
    server's logs. Only the application role may connect to the database.
    """
    for attempt in range(3):
        try:
            _ensure_application_database(settings, secrets, primary)
            return
        except (errors.DuplicateObject, errors.DuplicateDatabase, errors.UniqueViolation):
            # Another host's 'start' created the same role or database at the same moment.
            if attempt == 2:
                raise


def ensure_monitor_role(settings: Settings, secrets: ClusterSecrets, primary: NodeSpec) -> None:
    """The exporters' role: LOGIN with no password (it presents its client certificate, and
    pg_hba lets it into the postgres database only), member of pg_monitor and nothing else."""
    with connect_superuser(settings, secrets, primary) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('videodb-application-database'))")
        _monitor_role(conn, settings.database.monitor_user)


def _monitor_role(conn: psycopg.Connection[tuple[object, ...]], role: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    conn.execute(
        sql.SQL(
            verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD NULL"
        ).format(sql.Identifier(role))
    )
    conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))


def _ensure_application_database(
    settings: Settings, secrets: ClusterSecrets, primary: NodeSpec
) -> None:
    db = settings.database
    with connect_superuser(settings, secrets, primary) as conn:
        # Every host's 'start' runs this; one at a time (concurrent GRANTs fail with "tuple
        # concurrently updated"). The lock goes with this session.
        conn.execute("SELECT pg_advisory_lock(hashtext('videodb-application-database'))")
        _monitor_role(conn, db.monitor_user)
        verifier = conn.pgconn.encrypt_password(
            db.app_password.get_secret_value().encode(), db.app_user.encode(), b"scram-sha-256"
        ).decode()
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (db.app_user,)
        ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(
                verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "PASSWORD {}"
            ).format(sql.Identifier(db.app_user), sql.Literal(verifier))
        )
        has_db = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.name,)).fetchone()
        if not has_db:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db.name), sql.Identifier(db.app_user)
                )
            )
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db.name))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(db.name), sql.Identifier(db.app_user)
            )
        )
        with connect_superuser(settings, secrets, primary, dbname=db.name) as db_conn:
            db_conn.execute(
                sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(db.app_user))
            )
            db_conn.execute(POSITION_FUNCTION)
            db_conn.execute("REVOKE ALL ON FUNCTION public.videodb_position() FROM PUBLIC")
            db_conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION public.videodb_position() TO {}").format(
                    sql.Identifier(db.app_user)
                )
            )
