"""After COPY: verify, index, ANALYZE, make durable, and swap staging into place atomically."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import psycopg2
from psycopg2 import sql

from .db import is_transient, relation_exists
from .errors import DatabaseError, LoadFailed
from .sqlgen import create_indexes, create_staging

log = logging.getLogger(__name__)

#: How long the swap waits for a lock before giving up and retrying.  Readers holding the
#: published table delay the swap; a short timeout keeps new readers from queueing
#: behind our pending ACCESS EXCLUSIVE request for long.
SWAP_LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 30
#: Other finalize statements wait at most this long for a lock; the phase is then retried
#: (lock timeouts are transient errors), so no session of a load queues indefinitely
#: behind another (orphaned sessions of killed runs chained behind each other's ANALYZE).
FINALIZE_LOCK_TIMEOUT = "10s"


def expected_counts(plan) -> dict:
    """{table: {file_id: rows}} the plan promises."""
    out: dict = {}
    for fp in plan.files:
        for h in fp.info.hdus:
            if h.index in fp.tables:
                out.setdefault(fp.tables[h.index], {})[fp.file_id] = h.nrows
    return out


def verify_counts(conn, schema: str, staging: dict, expected: dict) -> dict:
    """Rows per file in each staging table; raises LoaderError when any differs from NAXIS2."""
    report = {}
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for table, per_file in expected.items():
            cur.execute(sql.SQL("SELECT file_id, count(*) FROM {} GROUP BY file_id").format(
                sql.Identifier(schema, staging[table])))
            got = dict(cur.fetchall())
            bad = {f: (n, got.get(f, 0)) for f, n in per_file.items() if got.get(f, 0) != n}
            extra = set(got) - set(per_file)
            if bad or extra:
                f, (want, have) = next(iter(bad.items())) if bad else (next(iter(extra)), (0, got[next(iter(extra))]))
                raise LoadFailed(f"verification failed for {table}: file_id {f} has {have} rows, "
                                  f"expected {want}", "nothing was published; rerun with --restart to "
                                  "load these files from scratch")
            report[table] = sum(got.values())
    conn.commit()
    return report


def prepare_staging(conn, schema: str, staging: dict, specs: dict) -> None:
    """Create missing UNLOGGED staging tables; add columns a resumed load's new files bring.

    Runs in the caller's transaction (the opening of a load commits it with the plan)."""
    with conn.cursor() as cur:
        for table, spec in specs.items():
            stage = staging[table]
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s", (schema, stage))
            have = dict(cur.fetchall())
            if not have:
                for stmt in create_staging(schema, stage, spec):
                    cur.execute(stmt)
                continue
            for col in spec.all_columns:
                if col.name not in have:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        sql.Identifier(schema, stage), sql.Identifier(col.name), sql.SQL(col.sql_type)))



def _constraint_exists(cur, schema: str, table: str, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                (f'"{schema}"."{table}"', name))
    return cur.fetchone() is not None


def build_indexes(conn, schema: str, staging: str, spec) -> None:
    """Primary key, unique (file_id, row_num) and the preset's indexes, then ANALYZE."""
    with conn.cursor() as cur:
        stmts = create_indexes(schema, staging, spec)
        if _constraint_exists(cur, schema, staging, f"{staging}_pkey"):
            stmts = stmts[1:]          # a resumed load built it already
        for stmt in stmts:
            try:
                cur.execute(stmt)
            except psycopg2.errors.UniqueViolation as exc:
                conn.rollback()
                detail = (exc.diag.message_detail or "").strip()
                raise LoadFailed(f"table {spec.name}: key ({', '.join(spec.key)}) is not unique: {detail}",
                                  "two files hold the same rows? load each file once") from exc
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, staging)))
    conn.commit()


def add_foreign_keys(conn, schema: str, staging: dict, fkeys: list) -> int:
    """Create and validate foreign keys between the staging tables; returns how many."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for fk in fkeys:
            child, cols, parent, pcols = fk.child, fk.columns, fk.parent, fk.parent_columns
            name = f"{staging[child]}_{'_'.join(cols[-1:])}_fkey"[:63]
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


def make_logged(conn, schema: str, staging: str) -> None:
    """SET LOGGED: rewrites the table (WAL-logged unless wal_level=minimal)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} SET LOGGED").format(sql.Identifier(schema, staging)))
    conn.commit()


def _rename_constraints(cur, schema: str, table: str, old_prefix: str) -> None:
    cur.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
                (f'"{schema}"."{table}"',))
    for (name,) in cur.fetchall():
        if name.startswith(old_prefix):
            cur.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                sql.Identifier(schema, table), sql.Identifier(name),
                sql.Identifier((table + name[len(old_prefix):])[:63])))


def _create_views(cur, schema: str, views: dict) -> None:
    for name, select in views.items():
        cur.execute("SAVEPOINT view")
        try:
            cur.execute(sql.SQL("CREATE VIEW {} AS ").format(sql.Identifier(schema, name)) +
                        sql.SQL(select.replace("{schema}", "{s}")).format(s=sql.Identifier(schema)))
            cur.execute("RELEASE SAVEPOINT view")
        except psycopg2.errors.UndefinedTable:
            cur.execute("ROLLBACK TO SAVEPOINT view")   # this load lacks a table the view needs
            log.info("view %s not created: its tables are not all loaded", name)


def _rename_indexes(cur, schema: str, table: str, old_prefix: str) -> None:
    cur.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = %s AND t.relname = %s", (schema, table))
    for (name,) in cur.fetchall():
        if name.startswith(old_prefix):
            new = table + name[len(old_prefix):]
            cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(schema, name), sql.Identifier(new[:63])))


def swap(conn, schema: str, staging: dict, load_id: int, catalog: str, views: Optional[dict] = None,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """Publish every staging table in one short transaction; returns attempts used.

    Each published table is renamed away, its staging table renamed in, the old one
    dropped, and the manifest flipped to this load, all or nothing.  A reader sees the
    old tables or the new ones.  Lock waits are bounded by SWAP_LOCK_TIMEOUT and retried.
    """
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (SWAP_LOCK_TIMEOUT,))
                for name in views or {}:
                    cur.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, name)))
                olds = []
                for table, stage in staging.items():
                    old = f"{table}__old{load_id}"
                    if relation_exists(cur, schema, table):
                        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                            sql.Identifier(schema, table), sql.Identifier(old)))
                        olds.append(old)
                    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        sql.Identifier(schema, stage), sql.Identifier(table)))
                if olds:   # one statement: old tables may reference each other
                    cur.execute(sql.SQL("DROP TABLE {}").format(
                        sql.SQL(", ").join(sql.Identifier(schema, o) for o in olds)))
                for table, stage in staging.items():
                    _rename_indexes(cur, schema, table, stage)
                    _rename_constraints(cur, schema, table, stage)
                _create_views(cur, schema, views or {})
                tables = list(staging)
                cur.execute(sql.SQL(
                    "UPDATE {s}.loader_loads SET status = 'replaced' WHERE status = 'published' "
                    "AND tables && %s AND load_id <> %s").format(s=sql.Identifier(schema)), (tables, load_id))
                cur.execute(sql.SQL(
                    "DELETE FROM {s}.load_files WHERE load_id IN (SELECT load_id FROM {s}.loader_loads "
                    "WHERE status = 'replaced')").format(s=sql.Identifier(schema)))
                cur.execute(sql.SQL("UPDATE {s}.load_files SET published = true, loaded_at = now() "
                                    "WHERE load_id = %s").format(s=sql.Identifier(schema)), (load_id,))
                cur.execute(sql.SQL("UPDATE {s}.loader_loads SET status = 'published', finished_at = now() "
                                    "WHERE load_id = %s").format(s=sql.Identifier(schema)), (load_id,))
            conn.commit()
            return attempt
        except psycopg2.Error as exc:
            conn.rollback()
            if not is_transient(exc) or attempt == SWAP_ATTEMPTS:
                raise DatabaseError(f"could not publish the tables: {str(exc).strip().splitlines()[0]}",
                                    "long-running queries may hold the tables; staging is kept, "
                                    "rerun to retry") from exc
            log.info("swap attempt %d waited too long for a lock (%s); retrying", attempt, exc.pgcode)
            sleep(min(0.2 * attempt, 2.0))
    raise AssertionError("unreachable")
