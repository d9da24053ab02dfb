"""After COPY: verify, index, ANALYZE, make durable, and swap staging into place atomically."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import psycopg2
from psycopg2 import sql

from . import attach, citus
from .db import first_line, is_transient, relation_exists
from .cone import q3c_index_statement
from .errors import DatabaseError, LoadFailed
from .ledger import publish_merged, publish_swapped, replaced_files
from .sqlgen import create_indexes, create_staging, index_name

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


def count_staging(conn, schema: str, staging: dict, tables) -> dict:
    """{table: {file_id: rows}} counted in the staging tables (a full scan of each)."""
    out = {}
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for table in tables:
            cur.execute(sql.SQL("SELECT file_id, count(*) FROM {} GROUP BY file_id").format(
                sql.Identifier(schema, staging[table])))
            out[table] = dict(cur.fetchall())
    conn.commit()
    return out


def check_counts(loaded: dict, expected: dict) -> dict:
    """Rows per table; raises LoadFailed when a file's rows in a table differ from its NAXIS2.

    ``loaded`` is {table: {file_id: rows}} as the ledger recorded them (the rows each COPY
    reported, committed with its task) or as counted in staging.
    """
    report = {}
    for table, per_file in expected.items():
        got = loaded.get(table, {})
        bad = {f: (n, got.get(f, 0)) for f, n in per_file.items() if got.get(f, 0) != n}
        extra = set(got) - set(per_file)
        if bad or extra:
            f, (want, have) = next(iter(bad.items())) if bad else (next(iter(extra)), (0, got[next(iter(extra))]))
            raise LoadFailed(f"verification failed for {table}: file_id {f} has {have} rows, expected {want}",
                             "nothing was published; rerun with --restart to load these files from scratch")
        report[table] = sum(got.values())
    return report


def lost_tasks(conn, schema: str, staging: dict, done: list) -> list:
    """Done tasks whose rows are not (all) in staging: after a server crash emptied UNLOGGED tables.

    One scan per staging table finds the files whose rows are short; only their tasks are
    then counted range by range.  A task with some rows left has them deleted, so that
    reloading it cannot duplicate anything.  Returns the task ids to reload.
    """
    per_table: dict = {}
    for _task_id, file_id, parts, _rows in done:
        for _hdu, table, start, stop in {(p[1], p[2], p[3]): p for p in parts}.values():
            per_table.setdefault(table, {}).setdefault(file_id, 0)
            per_table[table][file_id] += stop - start
    have = count_staging(conn, schema, staging, per_table)
    short = {(t, f) for t, files in per_table.items() for f, n in files.items() if have[t].get(f, 0) != n}
    lost = []
    with conn.cursor() as cur:
        for task_id, file_id, parts, _rows in done:
            ranges = {(p[1], p[2], p[3]) for p in parts}
            if not any((t, file_id) in short for t, _a, _b in ranges):
                continue
            counts = []
            for table, start, stop in ranges:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE file_id = %s AND row_num >= %s AND row_num < %s")
                            .format(sql.Identifier(schema, staging[table])), (file_id, start, stop))
                counts.append((table, start, stop, cur.fetchone()[0]))
            if all(n == stop - start for _t, start, stop, n in counts):
                continue
            for table, start, stop, n in counts:
                if n:
                    cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = %s AND row_num >= %s AND row_num < %s")
                                .format(sql.Identifier(schema, staging[table])), (file_id, start, stop))
            lost.append(task_id)
    conn.commit()
    return lost


def prepare_staging(conn, schema: str, staging: dict, specs: dict, logged: bool = False) -> None:
    """Create missing staging tables (logged, or UNLOGGED: ``logged``); add columns a resumed
    load's new files bring.

    Runs in the caller's transaction (the opening of a load commits it with the plan)."""
    with conn.cursor() as cur:
        on_cluster = citus.cluster(cur) is not None
        hashed: list = []                   # staging tables hashed so far: co-locate the next ones
        for table, spec in specs.items():
            stage = staging[table]
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s", (schema, stage))
            have = dict(cur.fetchall())
            if not have:
                for stmt in create_staging(schema, stage, spec, logged):
                    cur.execute(stmt)
                if on_cluster and spec.distribution is not None:
                    partner = citus.colocation_partner(cur, schema, [table] + hashed, spec.distribution)
                    citus.distribute(cur, schema, stage, spec.distribution, partner)
                    if spec.distribution.kind == "hash":
                        hashed.append(stage)
                continue
            for col in spec.all_columns:
                if col.name not in have:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        sql.Identifier(schema, stage), sql.Identifier(col.name), sql.SQL(col.sql_type)))



def _constraint_exists(cur, schema: str, table: str, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                (f'"{schema}"."{table}"', name))
    return cur.fetchone() is not None


def build_indexes(conn, schema: str, staging: str, spec, q3c: Optional[str] = None,
                  on_cluster: bool = False) -> None:
    """Primary key, unique (file_id, row_num), the preset's indexes and the q3c index (on
    tables with a sky index, when ``q3c`` names the extension's schema), then ANALYZE.
    ``on_cluster``: the server is a Citus coordinator (keys get the distribution column)."""
    with conn.cursor() as cur:
        on_cluster = on_cluster and spec.distribution is not None
        if on_cluster:
            citus.no_local_execution(cur)
        stmts = create_indexes(schema, staging, spec, spec.distribution if on_cluster else None)
        if q3c and spec.sky:
            stmts.append(q3c_index_statement(schema, staging, index_name(staging, ("q3c",)), spec.sky, q3c))
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


def build_user_indexes(conn, schema: str, table: str, stage: str, spec, load_id: int) -> int:
    """Build on staging the indexes users added to the published table (renamed back in the swap)."""
    mine = {f"{table}_pkey", index_name(table, ("file_id", "row_num")), index_name(table, ("q3c",))} | {
        index_name(table, c) for c in spec.indexes}
    with conn.cursor() as cur:
        found = attach.user_indexes(cur, schema, table, mine)
        for name, definition in found:
            cur.execute(attach.index_on(definition, schema, table, stage, name,
                                        attach.staging_index_name(name, load_id)))
    conn.commit()
    return len(found)


def add_columns(conn, schema: str, specs: dict) -> list:
    """Give the published tables the columns the new files bring (nullable: instant, no rewrite).

    Its own short transaction before the merge, so the merge holds no exclusive lock.
    """
    added = []
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for table, spec in specs.items():
            have = published_columns(cur, schema, table)
            for col in spec.all_columns:
                if col.name not in have:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        sql.Identifier(schema, table), sql.Identifier(col.name), sql.SQL(col.sql_type)))
                    if col.comment:
                        cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                            sql.Identifier(schema, table), sql.Identifier(col.name), sql.Literal(col.comment)))
                    added.append(f"{table}.{col.name}")
    conn.commit()
    return added


def published_columns(cur, schema: str, table: str) -> dict:
    """column -> SQL type of a published table ({} when it does not exist)."""
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                "to_regclass(format('%%I.%%I', %s::text, %s::text)) AND attnum > 0 AND NOT attisdropped",
                (schema, table))
    return dict(cur.fetchall())


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


def merge(conn, schema: str, staging: dict, specs: dict, load_id: int, order: list) -> dict:
    """Publish an incremental load in one transaction: the rows of files this load replaces
    are deleted, the staging rows inserted, the manifest flipped, staging dropped.

    Readers see the tables before or after (MVCC), never in between, and are not blocked:
    only row locks and the published tables' indexes are touched.  Keys and foreign keys
    are checked against the whole published tables by the inserts themselves.  ``order``
    lists tables parents first.  Returns {table: rows deleted}.
    """
    deleted = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
            replaced = replaced_files(cur, schema, list(staging), load_id)
            for table in reversed(order):
                cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = ANY(%s)").format(sql.Identifier(schema, table)),
                            (replaced,))
                deleted[table] = cur.rowcount
            for table in order:
                cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in specs[table].all_columns)
                cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                    sql.Identifier(schema, table), cols, cols, sql.Identifier(schema, staging[table])))
            publish_merged(cur, schema, load_id, replaced)
            cur.execute(sql.SQL("DROP TABLE {}").format(
                sql.SQL(", ").join(sql.Identifier(schema, t) for t in staging.values())))
        conn.commit()
    except (psycopg2.errors.UniqueViolation, psycopg2.errors.ForeignKeyViolation) as exc:
        conn.rollback()
        detail = (exc.diag.message_detail or "").strip()
        raise LoadFailed(f"the new rows conflict with the published {exc.diag.table_name}: "
                         f"{first_line(exc)} ({detail})",
                         "two files hold the same keys? nothing was published; remove the duplicate file, "
                         "or reload everything with --replace-all") from exc
    return deleted


def add_foreign_keys(conn, schema: str, staging: dict, fkeys: list) -> int:
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


def make_logged(conn, schema: str, staging: str) -> None:
    """SET LOGGED: rewrites the table (WAL-logged unless wal_level=minimal)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} SET LOGGED").format(sql.Identifier(schema, staging)))
    conn.commit()


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
    dropped, and the manifest flipped to this load, all or nothing; what users attached to
    the old tables (owner, grants, comments, row-level security, their views and indexes)
    moves to the new ones in the same transaction (attach.py).  A reader sees the old
    tables or the new ones.  Lock waits are bounded by SWAP_LOCK_TIMEOUT and retried.
    """
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (SWAP_LOCK_TIMEOUT,))
                _swap_tables(cur, schema, staging, load_id, views or {})
                publish_swapped(cur, schema, list(staging), load_id)
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


def _swap_tables(cur, schema: str, staging: dict, load_id: int, views: dict) -> None:
    published = [t for t in staging if relation_exists(cur, schema, t)]
    kept = {t: attach.capture(cur, schema, t) for t in published}
    user_views = attach.dependent_views(cur, schema, published, set(views))
    moved = {t: [n for n, _ in attach.user_indexes(cur, schema, t, set())] for t in published}
    attach.drop_views(cur, user_views)
    for name in views:
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, name)))
    olds = []
    for table, stage in staging.items():
        if table in published:
            old = f"{table}__old{load_id}"
            cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, table),
                                                                    sql.Identifier(old)))
            olds.append(old)
        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, stage),
                                                                sql.Identifier(table)))
    if olds:   # one statement: old tables may reference each other
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(sql.Identifier(schema, o) for o in olds)))
    for table, stage in staging.items():
        _rename_indexes(cur, schema, table, stage)
        for name in moved.get(table, ()):       # users' indexes, built on staging in the index phase
            cur.execute(sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                sql.Identifier(schema, attach.staging_index_name(name, load_id)), sql.Identifier(name)))
        if table in kept:
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(format('%%I.%%I', "
                        "%s::text, %s::text)) AND attnum > 0", (schema, table))
            attach.restore(cur, schema, table, kept[table], {r[0] for r in cur.fetchall()})
    _create_views(cur, schema, views)
    attach.create_views(cur, user_views)


