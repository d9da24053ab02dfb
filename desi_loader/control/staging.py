"""Staging tables: created before the copy (distributed on Citus), then made durable and tied
by foreign keys once the copy is done (indexes.py builds their indexes)."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TYPE_CHECKING

import psycopg2
from psycopg2 import sql

from ..db import connect
from .ledger import app_name
from ..catalog.skyindex import ensure_q3c, install_functions
from ..errors import LoadFailed
from .sqlgen import create_staging

if TYPE_CHECKING:
    from ..control.load import Load
    from .target import Server
    from ..db import Connection, Cursor

log = logging.getLogger(__name__)

#: Finalize statements wait at most this long for a lock; the phase is then retried
#: (lock timeouts are transient errors), so no session of a load queues indefinitely
#: behind another (orphaned sessions of killed runs chained behind each other's ANALYZE).
FINALIZE_LOCK_TIMEOUT = "10s"


def prepare_staging(conn: Connection, schema: str, staging: dict, specs: dict, target: Server,
                    logged: bool = False) -> None:
    """Create missing staging tables (logged, or UNLOGGED: ``logged``), placed by the load's
    ``target`` (target.py); add columns a resumed load's new files bring.

    Runs in the caller's transaction (the opening of a load commits it with the plan)."""
    with conn.cursor() as cur:
        hashed: list = []                   # staging tables hashed so far: co-locate the next ones
        for table, spec in specs.items():
            stage = staging[table]
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s", (schema, stage))
            have = dict(cur.fetchall())
            if not have:
                for stmt in create_staging(schema, stage, spec, logged):
                    cur.execute(stmt)
                target.distribute(cur, schema, table, stage, spec, hashed)
                continue
            for col in spec.all_columns:
                if col.name not in have:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        sql.Identifier(schema, stage), sql.Identifier(col.name), sql.SQL(col.sql_type)))


def _constraint_exists(cur: Cursor, schema: str, table: str, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                (f'"{schema}"."{table}"', name))
    return cur.fetchone() is not None


def table_order(tables, fkeys) -> list:
    """Tables with foreign-key parents before their children."""
    order: list = []
    pending = list(tables)
    while pending:
        ready = [t for t in pending if not any(fk.child == t and fk.parent in pending and fk.parent != t
                                               for fk in fkeys)]
        if not ready:                      # a cycle: keep the given order for the rest
            ready = pending[:1]
        order += [t for t in ready if t not in order]
        pending = [t for t in pending if t not in ready]
    return order


def add_foreign_keys(conn: Connection, schema: str, staging: dict, fkeys: list) -> int:
    """Create and validate foreign keys between the staging tables; returns how many."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for fk in fkeys:
            child, cols, parent, pcols = fk.child, fk.columns, fk.parent, fk.parent_columns
            # named for the published table from the start: foreign keys (not indexes) may share
            # names across tables, and Citus cannot rename constraints of distributed tables
            name = f"{child}_{'_'.join(cols[-1:])}_fkey"[:63]
            if _constraint_exists(cur, schema, staging[child], name):
                continue
            try:
                cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})").format(
                    sql.Identifier(schema, staging[child]), sql.Identifier(name[:63]),
                    sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(schema, staging[parent]),
                    sql.SQL(", ").join(map(sql.Identifier, pcols))))
            except psycopg2.errors.ForeignKeyViolation as exc:
                conn.rollback()
                detail = (exc.diag.message_detail or "").strip()
                raise LoadFailed(f"{child}.{cols[-1]} references a missing {parent}.{pcols[-1]}: {detail}",
                                  "the files are inconsistent; nothing was published") from exc
    conn.commit()
    return len(fkeys)


def make_logged(conn: Connection, schema: str, staging: str) -> None:
    """SET LOGGED: rewrites the table (WAL-logged unless wal_level=minimal)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} SET LOGGED").format(sql.Identifier(schema, staging)))
    conn.commit()


# ------------------------------------------------------------------ the finalizer's steps on a whole load

def per_table(load: Load, step: Callable[[object, str], None]) -> None:
    """Run ``step(connection, table)`` for every table of ``load`` (a load.Load), tables in
    parallel, one connection each.

    Index builds, ANALYZE and SET LOGGED are one-backend operations per table; the
    tables of a catalog are independent, so on a many-core server they overlap.
    """
    conns: list = []

    def one(table: str) -> None:
        c = connect(load.opts.dsn, app_name("finalize", load.ledger.tag))
        conns.append(c)
        try:
            with c.cursor() as cur:
                cur.execute("SET lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
            c.commit()
            step(c, table)
        finally:
            c.close()

    tables = sorted(load.tables, key=lambda t: -len(load.tables[t].all_columns))   # widest first
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(tables), load.opts.workers)))
    try:
        for future in [pool.submit(one, t) for t in tables]:
            future.result()
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM) or one table failed: stop the others' statements
        # now rather than wait minutes for index builds nobody will use
        for c in list(conns):
            if not c.closed:
                c.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prepare_sky(load: Load, warn: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """SQL functions of the cone search, and q3c where the server has it: q3c's schema
    (``warn``: the reporter's, told when q3c is there but this role cannot create it)."""
    if not any(spec.sky for spec in load.tables.values()):
        return None
    install_functions(load.conn, load.schema)
    return ensure_q3c(load.conn, warn) if warn else ensure_q3c(load.conn)


def durable(load: Load) -> None:
    """SET LOGGED on every staging table (before the foreign keys: a logged table may not
    reference an unlogged one)."""
    per_table(load, lambda c, t: make_logged(c, load.schema, load.staging_tables[t]))


def link(load: Load) -> int:
    """The preset's foreign keys between the staging tables."""
    return add_foreign_keys(load.conn, load.schema, load.staging_tables, load.fkeys)
