"""Connections: where the data goes, connecting with clear errors, masking secrets."""
from __future__ import annotations

import os
import re
from typing import Optional, TypeAlias

import psycopg2
import psycopg2.extensions

from .errors import DatabaseError

#: the connection and cursor types the package passes around (stage boundaries' annotations)
Connection: TypeAlias = psycopg2.extensions.connection
Cursor: TypeAlias = psycopg2.extensions.cursor

#: SQLSTATEs worth retrying: connection failures, server shutting down/starting,
#: too many connections, deadlock, serialization failure, lock timeout, and 58030, with
#: which a Citus coordinator reports a worker node it lost during a COPY ("failed to COPY
#: to shard"; on a single server it is an I/O error, which fails after the retries).
TRANSIENT_SQLSTATES = frozenset({"08000", "08003", "08006", "08001", "08004", "57P01", "57P02",
                                 "57P03", "53300", "40P01", "40001", "55P03", "58030"})


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by '***' (URI and key=value forms)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    dsn = re.sub(r"((?<![?&])password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.I)   # key=value form
    return re.sub(r"([?&]password=)[^&]*", r"\1***", dsn, flags=re.I)


#: A Citus coordinator relays a worker node's lost connection as an internal error (XX000)
#: with libpq's message: these (and only these) XX000 errors are worth a retry.
CITUS_LOST_NODE = re.compile(r"SSL SYSCALL error|server closed the connection unexpectedly|"
                             r"connection to the remote node .* failed|could not establish any connections|"
                             r"failure on connection marked as essential|connection not open|"
                             r"terminating connection due to administrator command|"
                             r"the database system is (starting up|in recovery mode|shutting down)")


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure (classified by SQLSTATE; message text only for the
    internal errors with which Citus reports a lost worker node)."""
    code = getattr(exc, "pgcode", None)
    if code is None:
        return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
    if code == "XX000":
        return bool(CITUS_LOST_NODE.search(str(exc)))
    return code in TRANSIENT_SQLSTATES


def _hint_for(message: str) -> str:
    low = message.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        return "check the user and password (~/.pgpass or PGPASSWORD; never put it in logs)"
    if "does not exist" in low and "database" in low:
        return "create the database first (createdb NAME) or point --dsn at an existing one"
    if "could not connect" in low or "connection refused" in low or "no such file" in low \
            or "could not translate host" in low:
        return "is the server running and reachable? check host/port in --dsn or PGHOST/PGPORT"
    return "check --dsn (or DESI_LOADER_DSN / the [database] section / PG* variables)"


#: TCP keepalives on every connection: a server session whose client host vanished
#: without a FIN (a crashed HPC node) ends after about idle + interval * count = 30 s,
#: releasing its claimed tasks and locks.  Same-host kills close the socket at once.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 3}

#: PostgreSQL 14+ checks during long statements (CREATE INDEX, ANALYZE, lock waits) that
#: the client is still there, and cancels the statement when it is not.  Without it a
#: killed loader's session finishes minutes of work nobody waits for, holding locks.
CLIENT_CHECK_INTERVAL = "5s"


def connect(dsn: str, application_name: str = "desi-loader") -> psycopg2.extensions.connection:
    """Open a connection or raise DatabaseError with a one-line reason and a fix.

    Every connection has TCP keepalives, ``client_connection_check_interval`` where the
    server has it, and an ``application_name`` saying which loader process it serves.
    """
    try:
        conn = psycopg2.connect(dsn, application_name=application_name[:63], **KEEPALIVES)
        if conn.server_version >= 140000:
            with conn.cursor() as cur:
                cur.execute("SET client_connection_check_interval = %s", (CLIENT_CHECK_INTERVAL,))
            conn.commit()
    except psycopg2.Error as exc:
        first = mask_dsn(first_line(exc))
        raise DatabaseError(f"cannot connect to {mask_dsn(dsn)}: {first}", _hint_for(str(exc))) from exc
    return conn


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg2 adds DETAIL/HINT lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def as_database_error(exc: BaseException, hint: str) -> DatabaseError:
    """A psycopg2 error as the library's DatabaseError (first line and SQLSTATE)."""
    code = getattr(exc, "pgcode", None)
    return DatabaseError(first_line(exc) + (f" (SQLSTATE {code})" if code else ""), hint)


def resolve_dsn(cli_dsn: Optional[str], config_dsn: Optional[str]) -> Optional[str]:
    """The target, by precedence: --dsn, DESI_LOADER_DSN, config [database] dsn, libpq env.

    Returns '' when libpq's own environment (PGHOST/PGSERVICE/PGDATABASE) should be used,
    and None when nothing is configured (then the embedded server is used).
    """
    for value in (cli_dsn, os.environ.get("DESI_LOADER_DSN"), config_dsn):
        if value:
            return value
    if any(os.environ.get(k) for k in ("PGHOST", "PGSERVICE", "PGDATABASE")):
        return ""
    return None


def relation_oid(cur: Cursor, schema: str, name: str) -> Optional[int]:
    """The OID of schema.name (a table, view or index; names taken literally, any characters),
    None when there is none: the one to_regclass lookup of the package."""
    cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid", (schema, name))
    return cur.fetchone()[0]


def relation_exists(cur: Cursor, schema: str, name: str) -> bool:
    """True when schema.name is a table, view or index (names taken literally, any characters)."""
    return relation_oid(cur, schema, name) is not None


def free_connections(conn: psycopg2.extensions.connection) -> int:
    """Connection slots a non-superuser can still open on the server (and as this role, database).

    max_connections minus the reserved slots (superuser_reserved_connections, and
    reserved_connections on PostgreSQL 16+) minus the client sessions open now; the
    role's and the database's CONNECTION LIMIT cap it further.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('max_connections')::int "
            "- current_setting('superuser_reserved_connections')::int "
            "- coalesce(current_setting('reserved_connections', true)::int, 0) "
            "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
            "(SELECT CASE WHEN rolconnlimit < 0 THEN NULL ELSE rolconnlimit - (SELECT count(*) FROM "
            " pg_stat_activity WHERE usename = current_user) END FROM pg_roles WHERE rolname = current_user), "
            "(SELECT CASE WHEN datconnlimit < 0 THEN NULL ELSE datconnlimit - (SELECT count(*) FROM "
            " pg_stat_activity WHERE datname = current_database()) END FROM pg_database "
            " WHERE datname = current_database())")
        free = min(v for v in cur.fetchone() if v is not None)
    conn.commit()
    return max(0, int(free))


def server_settings(conn: psycopg2.extensions.connection) -> dict:
    """Settings that decide load speed and durability cost (reported in the summary)."""
    names = ("server_version", "wal_level", "max_wal_size", "maintenance_work_mem",
             "synchronous_commit", "max_connections", "shared_buffers", "data_checksums", "wal_log_hints",
             "checkpoint_completion_target")
    with conn.cursor() as cur:
        cur.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (list(names),))
        out = {n: (s + (u or "") if u and u not in ("8kB",) else s) for n, s, u in cur.fetchall()}
    return out


_SIZE_UNITS = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def size_bytes(value: str) -> Optional[int]:
    """Bytes of a size setting as server_settings shows it ('1GB', '32768MB'; MB without a unit)."""
    num = value.rstrip("kMGTB")
    if not num.isdigit():
        return None
    return int(num) * _SIZE_UNITS.get(value[len(num):], 1 << 20)
